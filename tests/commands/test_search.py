"""Mixed-precision search and the executors it runs on: the greedy result obeys its own rules."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from intssm import data
from intssm.training import checkpoint
from intssm.errors import IntssmError
from intssm.executor import LocalExecutor, get_executor
from intssm.training.model import PRESETS, S4DModel
from intssm.training.calibrate import calibrate
from intssm.datapath.qspec import PRESETS as QP
from intssm.datapath.qspec import QuantConfig, get_config
from intssm.datapath.ranges import ranges_to_json
from intssm.search import GROUPS, LADDER, greedy, lower, pareto, signature

from cli_helpers import assert_clean_error, intssm, ok_json


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny float model (untrained weights, seeded) saved as a checkpoint, and its calibrated ranges."""
    d = tmp_path_factory.mktemp("search")
    m = S4DModel(PRESETS["tiny"], seed=3)
    ck = d / "tiny.pt"
    checkpoint.save(ck, m, dataset={"seq": "smnist"})
    cal = data.load("smnist", "train", 16)
    return {"dir": d, "ckpt": ck, "ranges": ranges_to_json(calibrate(m, torch.from_numpy(cal.as_float())).ranges)}


def test_lower_walks_the_ladder_and_stops_at_the_bottom():
    """Lowering Abar from w8a8 visits every LADDER width <= 8 in order, A_re and A_im equal at each, then
    returns None."""
    q = QP["w8a8"]
    seen = []
    while q is not None:
        seen.append(q.A_re.bits)
        assert q.A_re.bits == q.A_im.bits  # real and imaginary parts move together
        q = lower(q, "Abar")
    assert seen == [b for b in LADDER if b <= 8]


pts = st.lists(st.fixed_dictionaries({"bytes": st.integers(1, 50), "accuracy": st.one_of(st.none(), st.floats(0, 1))}), max_size=30)


@given(pts)
def test_pareto_front_is_exactly_the_non_dominated_points(points):
    """On drawn points: no front point is dominated by a scored point, every scored point is matched or beaten
    by a front point, and the front is sorted by bytes."""
    front = pareto(points)
    scored = [p for p in points if p["accuracy"] is not None]

    def dominated(p):
        return any((q["bytes"] <= p["bytes"] and q["accuracy"] >= p["accuracy"]) and
                   (q["bytes"] < p["bytes"] or q["accuracy"] > p["accuracy"]) for q in scored)

    for p in front:
        assert not dominated(p)
    for p in scored:  # every scored point is on the front or no better than a front point
        assert any(f["bytes"] <= p["bytes"] and f["accuracy"] >= p["accuracy"] for f in front)
    assert [p["bytes"] for p in front] == sorted(p["bytes"] for p in front)


def test_greedy_result_meets_the_floor_and_is_a_local_minimum(tiny):
    """Greedy search on a tiny model: every accepted step keeps accuracy >= the floor and saves bytes, the result
    is the last step, no single further step in a searched group both keeps the floor and saves bytes, and
    unsearched groups keep their starting widths."""
    floor, groups = 0.05, ("B", "C", "x")
    with LocalExecutor(2) as ex:
        chosen, points, trace = greedy(str(tiny["ckpt"]), "smnist", QP["w8a8"], tiny["ranges"], floor, ex,
                                       val_limit=60, groups=groups)
    assert chosen is not None and chosen == trace[-1]["config"]
    assert all(t["accuracy"] >= floor for t in trace)
    assert all(b["bytes"] < a["bytes"] for a, b in zip(trace, trace[1:]))  # every move saves memory
    final = QuantConfig.from_dict(chosen)
    by_sig = {p["signature"]: p for p in points}
    for g in groups:  # no single further step in an allowed group stays above the floor and saves bytes
        nxt = lower(final, g)
        if nxt is None:
            continue
        p = by_sig[signature(nxt)]
        assert p["accuracy"] is None or p["accuracy"] < floor or p["bytes"] >= trace[-1]["bytes"]
    for g in set(GROUPS) - set(groups):  # groups not searched keep the start's widths
        for n in GROUPS[g]:
            assert getattr(final, n) == getattr(QP["w8a8"], n)


def test_search_cli_writes_a_usable_config(tiny):
    """`intssm search` scores >= 2 candidates, reaches the floor, writes best.json (loadable, D and dec_w
    <= 8 bits), a non-trivial pareto.png and a bytes-sorted front.json; `intssm ptq --config best.json` succeeds."""
    out = tiny["dir"] / "s"
    r = ok_json(intssm("search", tiny["ckpt"], "--min-accuracy", "0.05", "--start", "w8a8", "--groups", "D,dec_w",
                       "--val-limit", "40", "--calib", "8", "--workers", "1", "--no-test", "-o", out, "--json"))
    assert r["best"]["accuracy"] >= 0.05 and r["scored"] >= 2
    cfg = get_config(str(out / "best.json"))  # loads as a config file
    assert cfg.D.bits <= 8 and cfg.dec_w.bits <= 8
    assert (out / "pareto.png").stat().st_size > 1000
    front = json.loads((out / "front.json").read_text())
    assert front == sorted(front, key=lambda p: p["bytes"])
    r = intssm("ptq", tiny["ckpt"], "-o", tiny["dir"] / "q.pt", "--config", out / "best.json", "--calib", "8", "--json")
    ok_json(r)


def test_search_cli_errors(tiny):
    """An unknown group, --min-accuracy or --equalize out of range, an unknown executor, and an unreachable floor
    each give one `error:` line and exit 2."""
    assert_clean_error(intssm("search", tiny["ckpt"], "--groups", "B,nope"), "unknown group")
    assert_clean_error(intssm("search", tiny["ckpt"], "--min-accuracy", "1.5"), "--min-accuracy")
    assert_clean_error(intssm("search", tiny["ckpt"], "--equalize", "1.5"), "--equalize")
    assert_clean_error(intssm("search", tiny["ckpt"], "--executor", "slurm", "--groups", "D", "--val-limit", "5",
                              "--calib", "4", "-o", tiny["dir"] / "e"), "--executor")
    # a floor the start cannot reach: one line, exit 2
    assert_clean_error(intssm("search", tiny["ckpt"], "--min-accuracy", "1.0", "--groups", "D", "--val-limit", "20",
                              "--calib", "4", "--workers", "1", "-o", tiny["dir"] / "f"), "below the floor")


def test_executors_return_every_result_once():
    """The local executor returns each of 5 results once, keyed by input index; an unknown executor and 0
    workers are refused with IntssmError."""
    kws = [{"i": i, "sq": i * i} for i in range(5)]
    with get_executor("local", 2) as ex:
        got = dict(ex.map_unordered(dict, kws))
    assert got == dict(enumerate(kws))
    with pytest.raises(IntssmError):
        get_executor("slurm")
    with pytest.raises(IntssmError):
        LocalExecutor(0)


def test_ray_executor_runs_a_small_sweep_on_a_local_instance(tiny):
    """CI installs the [cluster] extra: a local Ray instance runs a small search sweep."""
    pytest.importorskip("ray")
    with get_executor("ray", 2) as ex:
        assert dict(ex.map_unordered(dict, [{"a": 1}, {"a": 2}])) == {0: {"a": 1}, 1: {"a": 2}}
        chosen, points, trace = greedy(str(tiny["ckpt"]), "smnist", QP["w8a8"], tiny["ranges"], 0.05, ex,
                                       val_limit=30, groups=("D",))
    with LocalExecutor(2) as ex:  # the same sweep through local processes gives the same answer
        chosen2, points2, _ = greedy(str(tiny["ckpt"]), "smnist", QP["w8a8"], tiny["ranges"], 0.05, ex,
                                     val_limit=30, groups=("D",))
    assert chosen == chosen2
    assert sorted((p["signature"], p["accuracy"]) for p in points) == sorted((p["signature"], p["accuracy"]) for p in points2)


def test_score_with_qat_fine_tuning_changes_the_candidate(tiny):
    """--qat-steps fine-tunes each candidate (discrete Abar) before it is scored on validation."""
    from intssm.search import score

    cfg = QP["paper-hetero"].to_dict()
    plain = score(str(tiny["ckpt"]), "smnist", cfg, tiny["ranges"], 200)
    tuned = score(str(tiny["ckpt"]), "smnist", cfg, tiny["ranges"], 200, qat_steps=3)
    assert plain["bytes"] == tuned["bytes"]
    assert 0 <= tuned["accuracy"] <= 1
    # three AdamW steps move the weights: the integer model's saturation pattern changes
    assert (plain["accuracy"], plain["saturations"]) != (tuned["accuracy"], tuned["saturations"])


def test_search_with_equalized_states_scores_the_model_its_ptq_command_builds(tiny):
    """``--equalize``: the candidates quantize one equalized copy of the float model, written beside
    the results; the PTQ command the search prints rebuilds exactly that model (same weights), and
    an integer model that scores the search's own validation accuracy."""
    from intssm.training.equalize import mode_ranges

    out = tiny["dir"] / "eq"
    r = ok_json(intssm("search", tiny["ckpt"], "--min-accuracy", "0.05", "--start", "w8a8", "--groups", "D",
                       "--val-limit", "20", "--calib", "8", "--workers", "1", "--no-test", "--equalize", "1", "-o", out, "--json"))
    assert r["equalize"] == 1.0
    cmd = r["ptq_command"].split()
    assert cmd[:3] == ["intssm", "ptq", str(tiny["ckpt"])] and "--equalize" in cmd and cmd[cmd.index("--calib") + 1] == "8"
    eq, _ = checkpoint.load(out / "equalized-fp32.pt")
    orig, _ = checkpoint.load(tiny["ckpt"])
    u = torch.from_numpy(data.load("smnist", "train", 8).as_float())
    r_eq, r_orig = mode_ranges(eq, u)[0], mode_ranges(orig, u)[0]
    assert not torch.allclose(r_orig, r_orig.amax(1, keepdim=True))  # the tiny model's modes differ in range ...
    torch.testing.assert_close(r_eq, r_eq.amax(1, keepdim=True).expand_as(r_eq), rtol=1e-6, atol=0)  # ... not after alpha 1
    q = tiny["dir"] / "eq-q.pt"
    ok_json(intssm(*cmd[1:-2], "-o", q, "--json"))
    qm_model, ck = checkpoint.load(q)
    for k, v in eq.state_dict().items():
        assert torch.equal(qm_model.state_dict()[k], v), k
    assert ck["ptq"]["equalize"] == 1.0
    sim = ok_json(intssm("simulate", q, "--split", "val", "--limit", "20", "--verify", "0", "--json"))
    assert sim["n"] == 20 and sim["accuracy"] == r["best"]["accuracy"]
