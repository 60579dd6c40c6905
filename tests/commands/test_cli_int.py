"""The integer CLI end to end, in subprocesses: ptq, simulate, export, inspect, configs, and their errors."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cli_helpers import assert_clean_error, intssm, ok_json

L_SMNIST = 784
TINY_H, TINY_N2 = 4, 4  # preset tiny: d_model 4, d_state 8


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny float model trained for one epoch on 300 sequences, and its PTQ (w8a8, 16 calibration sequences)."""
    d = tmp_path_factory.mktemp("cli_int")
    r = intssm("train", "--preset", "tiny", "--epochs", "1", "--limit", "300", "--threads", "1",
               "-o", d / "f.pt", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    r = intssm("ptq", d / "f.pt", "-o", d / "q.pt", "--config", "w8a8", "--calib", "16", "--json")
    return {"dir": d, "float": d / "f.pt", "quant": d / "q.pt", "ptq": r}


@pytest.fixture(scope="module")
def sim_q(work):
    """`simulate q.pt --limit 40 --verify all --json`, run once."""
    return intssm("simulate", work["quant"], "--limit", "40", "--verify", "all", "--json")


@pytest.fixture(scope="module")
def exported(work):
    """`export q.pt -o a.npz --json`, run once."""
    out = work["dir"] / "a.npz"
    return out, intssm("export", work["quant"], "-o", out, "--json")


# ----------------------------------------------------------------------------------- ptq


def test_ptq_writes_quantized_checkpoint(work):
    """ptq writes a checkpoint carrying a qspec (datapath version, quant config, ranges, sequence length)."""
    from intssm.training import checkpoint
    from intssm.datapath.qspec import DATAPATH_VERSION, PRESETS, QuantConfig

    out = ok_json(work["ptq"])
    assert out == {"out": str(work["quant"]), "config": "w8a8", "calib": 16}
    assert work["quant"].is_file()
    ck = checkpoint.load_raw(work["quant"])
    qs = ck["qspec"]
    assert qs["datapath_version"] == DATAPATH_VERSION
    assert qs["seq_len"] == L_SMNIST
    assert QuantConfig.from_dict(qs["quant_config"]) == PRESETS["w8a8"]
    assert ck["ptq"] == {"config": "w8a8", "calib": 16, "seq": "smnist", "equalize": 0.0}


def test_ptq_of_quantized_checkpoint_refused(work, tmp_path):
    """A quantized checkpoint is not a valid ptq input."""
    r = intssm("ptq", work["quant"], "-o", tmp_path / "qq.pt")
    assert_clean_error(r, "already quantized")
    assert not (tmp_path / "qq.pt").exists()


# ------------------------------------------------------------------------------ simulate


def test_simulate_verify_all_json(sim_q):
    """simulate --verify all --json: one JSON object; all 40 sequences verified and bit-exact against Torch."""
    out = ok_json(sim_q)
    for k in ("accuracy", "n", "n_verified", "bit_exact", "saturations", "steps_per_s"):
        assert k in out, k
    assert out["n"] == 40
    assert out["n_verified"] == 40
    assert out["bit_exact"] == 40
    assert 0.0 <= out["accuracy"] <= 1.0
    assert round(out["accuracy"] * 40) == out["accuracy"] * 40  # k / 40
    sats = out["saturations"]
    assert isinstance(sats, dict)
    assert list(sats) == ["h0", "l0.x_re", "l0.x_im", "l0.y", "l0.glu", "l0.h", "pool", "logits"]
    assert all(isinstance(v, int) and v >= 0 for v in sats.values())
    assert out["steps_per_s"] > 0
    assert "quantized checkpoint" in out["source"]


def test_simulate_without_a_model_runs_the_shipped_heterogeneous_model():
    """`intssm simulate` with no model runs data/checkpoints/paper-small-hetero.pt, bit-exactly."""
    out = ok_json(intssm("simulate", "--limit", "30", "--verify", "30", "--json"))
    assert "paper-small-hetero.pt" in out["source"]
    assert out["n_verified"] == 30 and out["bit_exact"] == 30
    assert out["accuracy"] >= 0.8  # the shipped model is 97.13% on the full test set


def test_simulate_float_checkpoint_default_ptq(work):
    """simulate of a float checkpoint applies the default PTQ and still verifies bit-exactly."""
    out = ok_json(intssm("simulate", work["float"], "--limit", "20", "--verify", "10", "--json"))
    assert out["n"] == 20 and out["n_verified"] == 10 and out["bit_exact"] == 10
    assert "default PTQ" in out["source"]
    assert out["steps_per_s"] > 0


def test_simulate_human_output(work):
    """Without --json, simulate prints the accuracy, the verification count and the speed."""
    r = intssm("simulate", work["quant"], "--limit", "5", "--verify", "5")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert "5/5 sequences with identical integer logits" in r.stdout
    assert "steps/s" in r.stdout


def test_simulate_trace(work):
    """--trace writes the integer state x_re, x_im of sequence 0 as (784, layers, H, N/2), equal to the library's trace."""
    from intssm import data
    from intssm import sources as integer
    from intssm.integer.sim import simulate

    tr = work["dir"] / "tr.npz"
    out = ok_json(intssm("simulate", work["quant"], "--trace", tr, "--limit", "2", "--json"))
    assert out["trace"] == str(tr) and out["n"] == 2
    with np.load(tr, allow_pickle=False) as z:
        assert sorted(z.files) == ["counters", "index", "logits", "x_im", "x_re"]
        x_re, x_im = z["x_re"], z["x_im"]
    assert x_re.shape == (L_SMNIST, 1, TINY_H, TINY_N2)
    assert x_im.shape == (L_SMNIST, 1, TINY_H, TINY_N2)
    assert np.issubdtype(x_re.dtype, np.integer) and np.issubdtype(x_im.dtype, np.integer)
    for x in (x_re, x_im):
        assert x.min() >= -128 and x.max() <= 127  # w8a8: 8-bit symmetric state codes
    im = integer.load(work["quant"])
    ds = data.load("smnist", "test", 2)
    _, _, (ref_re, ref_im) = simulate(im.model, ds.x[:1], trace=True)
    assert np.array_equal(x_re, ref_re)
    assert np.array_equal(x_im, ref_im)


def test_simulate_golden_vectors(work):
    """--logits writes every sequence's integer logits, prediction, label and counters, equal to the
    library's; --trace-index traces the chosen sequence, whose logits match its row."""
    from intssm import data
    from intssm import sources as integer
    from intssm.integer.sim import simulate

    gold, tr = work["dir"] / "gold.npz", work["dir"] / "tr3.npz"
    out = ok_json(intssm("simulate", work["quant"], "--limit", "4", "--verify", "0", "--logits", gold,
                         "--trace", tr, "--trace-index", "3", "--json"))
    assert out["logits"] == str(gold)
    im = integer.load(work["quant"])
    ds = data.load("smnist", "test", 4)
    lg, cnt, _ = simulate(im.model, ds.x)
    with np.load(gold, allow_pickle=False) as z:
        assert np.array_equal(z["logits"], lg) and np.array_equal(z["counters"], cnt)
        assert np.array_equal(z["pred"], lg.argmax(1)) and np.array_equal(z["labels"], ds.y)
        assert z["counter_names"].tolist() == list(im.model.counters) and z["lengths"].tolist() == [L_SMNIST] * 4
    _, _, (ref_re, _) = simulate(im.model, ds.x[3:4], trace=True)
    with np.load(tr, allow_pickle=False) as z:
        assert int(z["index"]) == 3 and np.array_equal(z["x_re"], ref_re) and np.array_equal(z["logits"], lg[3])
    r = intssm("simulate", work["quant"], "--limit", "2", "--trace", tr, "--trace-index", "2")
    assert r.returncode == 2 and "--trace-index 2 is beyond the 2 sequences" in r.stderr


def test_outputs_never_over_inputs(work, tmp_path):
    """An output that is the command's input, a directory or in an unwritable place is refused before
    any work, and the input is left byte-identical."""
    import hashlib
    import os

    q = work["quant"]
    before = hashlib.sha256(q.read_bytes()).hexdigest()
    for args, msg in ((["simulate", q, "--trace", q.with_suffix(".npz")], None),
                      (["qat", q, "-o", q], "is also an input"),
                      (["ptq", q, "-o", tmp_path], "is a directory"),
                      (["simulate", q, "--logits", q], "must end in .npz")):
        if msg is None:
            continue
        r = intssm(*args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    art = tmp_path / "m.npz"
    assert intssm("export", q, "-o", art).returncode == 0
    r = intssm("simulate", art, "--limit", "2", "--trace", art)
    assert r.returncode == 2 and "--trace" in r.stderr and "is also an input" in r.stderr
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        r = intssm("export", q, "-o", ro / "x.npz")
        assert r.returncode == 2 and "cannot write" in r.stderr
    assert hashlib.sha256(q.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


# ------------------------------------------------------------------------ export / inspect


def test_export_json(exported):
    """export writes an .npz and reports its size and versions."""
    from intssm.integer.export import FORMAT_VERSION
    from intssm.datapath.qspec import DATAPATH_VERSION

    path, r = exported
    out = ok_json(r)
    assert out["out"] == str(path) and path.is_file()
    assert out["bytes"] == path.stat().st_size
    assert out["format_version"] == FORMAT_VERSION
    assert out["datapath_version"] == DATAPATH_VERSION


def test_inspect_human(exported):
    """inspect prints the format line and one row per array."""
    path, r = exported
    assert r.returncode == 0, r.stderr
    r = intssm("inspect", path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert "format intssm-int v1" in r.stdout
    for k in ("A_re", "x_re_M", "gelu_lut", "logits_S", "qrange"):
        assert k in r.stdout, k


def test_inspect_json_lists_arrays(exported):
    """inspect --json lists every array of the artifact with the shape the model config implies."""
    from intssm.datapath.layout import expected_shapes
    from intssm.training.model import PRESETS as MODEL_PRESETS
    from intssm.datapath.qspec import PRESETS

    path, r = exported
    assert r.returncode == 0, r.stderr
    out = ok_json(intssm("inspect", path, "--json"))
    shapes = expected_shapes(MODEL_PRESETS["tiny"], PRESETS["w8a8"])
    rows = {row["name"]: row for row in out["arrays"]}
    assert sorted(rows) == sorted(shapes)
    for k, shp in shapes.items():
        assert tuple(rows[k]["shape"]) == shp, k
        assert rows[k]["min"] <= rows[k]["max"]
    assert -128 <= rows["A_re"]["min"] and rows["A_re"]["max"] <= 127
    man = out["manifest"]
    assert man["format"] == "intssm-int" and man["seq_len"] == L_SMNIST
    assert man["model_config"]["d_model"] == TINY_H
    assert "l0.x_re" in out["tensors"]


def test_simulate_exported_matches_checkpoint(exported, sim_q):
    """The exported artifact simulates to the same accuracy and saturation counts as the quantized checkpoint (nothing to verify against)."""
    path, r = exported
    assert r.returncode == 0, r.stderr
    out = ok_json(intssm("simulate", path, "--limit", "40", "--json"))
    ref = ok_json(sim_q)
    assert out["n"] == 40 and out["n_verified"] == 0 and out["bit_exact"] == 0
    assert out["accuracy"] == ref["accuracy"]
    assert out["saturations"] == ref["saturations"]
    assert "integer artifact" in out["source"]


def test_export_requires_npz_suffix(work, tmp_path):
    """export -o must name an .npz file."""
    r = intssm("export", work["quant"], "-o", tmp_path / "a.bin")
    assert_clean_error(r, "--out must end in .npz")


# ------------------------------------------------------------------------------- configs


def test_configs_json():
    """configs --json lists every preset (w8a8, paper-hetero, ...) with its per-component bits."""
    from intssm.datapath.qspec import PRESETS

    out = ok_json(intssm("configs", "--json"))
    cfgs = out["configs"]
    assert "w8a8" in cfgs and "paper-hetero" in cfgs
    assert sorted(cfgs) == sorted(PRESETS)
    assert cfgs["w8a8"]["A_re"] == "8s" and cfgs["w8a8"]["act"] == "8a" and cfgs["w8a8"]["logits"] == "16s"
    assert cfgs["paper-hetero"]["B"] == "4s/ch" and cfgs["paper-hetero"]["h"] == "6s"


# -------------------------------------------------------------------------------- errors


BAD_CONFIGS = {
    "bits1": ({"A_re": {"bits": 1}}, "A_re.bits must be an integer in 2..16, got 1"),
    "unknown": ({"nosuch": 8}, "unknown component(s) ['nosuch']"),
    "bits33": ({"A_re": {"bits": 33}}, "A_re.bits must be an integer in 2..16, got 33"),
    "stable_str": ({"stable_abar": "yes"}, "stable_abar must be true or false, got 'yes'"),
    "bias33": ({"bias_bits": 33}, "bias_bits must be an integer in 2..32, got 33"),
    "rounding": ({"state_rounding": "stochastic"}, "state_rounding must be one of ['nearest', 'dither'], got 'stochastic'"),
}


@pytest.fixture(scope="module")
def error_runs(work):
    """The bad-input commands, run concurrently (each is an independent interpreter start)."""
    d = work["dir"] / "errors"
    d.mkdir()
    jobs = {"config_nosuch": ["ptq", work["float"], "-o", d / "nosuch.pt", "--config", "nosuch"],
            "verify_neg": ["simulate", work["quant"], "--limit", "5", "--verify", "-3"],
            "verify_abc": ["simulate", work["quant"], "--limit", "5", "--verify", "abc"],
            "equalize_big": ["ptq", work["float"], "-o", d / "eq.pt", "--equalize", "1.5"],
            "equalize_quantized": ["qat", work["quant"], "-o", d / "eqq.pt", "--equalize", "0.5", "--limit", "64"]}
    for name, (cfg, _) in BAD_CONFIGS.items():
        p = d / f"{name}.json"
        p.write_text(json.dumps(cfg))
        jobs[name] = ["ptq", work["float"], "-o", d / f"{name}.pt", "--config", p]
    with ThreadPoolExecutor(max_workers=3) as ex:
        futs = {k: ex.submit(intssm, *a) for k, a in jobs.items()}
        return d, {k: f.result() for k, f in futs.items()}


def test_ptq_unknown_config(error_runs):
    """ptq --config nosuch: not a preset and not a file."""
    d, runs = error_runs
    assert_clean_error(runs["config_nosuch"], "unknown quant config 'nosuch'")
    assert not (d / "nosuch.pt").exists()


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_ptq_bad_json_config(error_runs, name):
    """ptq with a JSON config of impossible bits or an unknown component fails with one line and writes nothing."""
    d, runs = error_runs
    assert_clean_error(runs[name], BAD_CONFIGS[name][1])
    assert not (d / f"{name}.pt").exists()


@pytest.mark.parametrize("name,fragment", [("verify_neg", "--verify must be >= 0, got -3"),
                                           ("verify_abc", "--verify takes a number or 'all', got 'abc'")])
def test_simulate_bad_verify(error_runs, name, fragment):
    """simulate --verify takes a count >= 0 or 'all'."""
    assert_clean_error(error_runs[1][name], fragment)


@pytest.mark.parametrize("name,fragment", [("equalize_big", "--equalize must be in [0, 1] (0 = off), got 1.5"),
                                           ("equalize_quantized", "--equalize applies to a float checkpoint")])
def test_equalize_bad_input(error_runs, name, fragment):
    """--equalize takes a strength in [0, 1], and only for a float checkpoint (before calibration)."""
    d, runs = error_runs
    assert_clean_error(runs[name], fragment)
    assert not (d / "eq.pt").exists() and not (d / "eqq.pt").exists()


# ------------------------------------------------------------------------- memory, profile


def test_memory_json_matches_cost_model(exported):
    """`memory` on the artifact reports bytes, fp32_bytes, reduction equal to intssm.integer.cost.memory."""
    from intssm.integer import cost, export

    out, _ = exported
    r = intssm("memory", out, "--json")
    d = ok_json(r)
    _, man = export.load_with_manifest(out)
    from intssm.training.model import ModelConfig
    from intssm.datapath.qspec import QuantConfig

    want = cost.memory(ModelConfig.from_dict(man["model_config"]), QuantConfig.from_dict(man["quant_config"]), man["seq_len"])
    assert d["bytes"] == want["bytes"] and d["fp32_bytes"] == want["fp32_bytes"]
    assert d["reduction"] == pytest.approx(d["fp32_bytes"] / d["bytes"], rel=0.01)


def test_profile_json_and_plot(work, tmp_path):
    """`profile` reports per-step ops whose multiplications sum over parts, rates in [0, 1], and writes a PNG."""
    png = tmp_path / "p.png"
    d = ok_json(intssm("profile", work["quant"], "--limit", "3", "--plot", png, "--json"))
    for k, v in d["step_ops"].items():
        assert v == sum(p.get(k, 0) for p in d["parts"].values())
    assert d["sequence_ops"]["shift"] == d["step_ops"]["shift"] * d["seq_len"] + d["final_ops"]["shift"]
    assert all(0 <= r["rate"] <= 1 for r in d["saturation_rates"].values())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert d["energy_ratio_fp32_over_int"] > 1


@pytest.mark.slow  # QAT option end to end (about 20-40 s); CI runs the slow profile
def test_qat_requantizes_a_quantized_checkpoint_at_new_formats(work, tmp_path):
    """`qat q.pt --config NEW` keeps the stored ranges and learned weights, switches to NEW's formats
    (progressive bit lowering), and the result simulates bit-exactly; without --config it keeps its own."""
    from intssm.training import checkpoint
    from intssm.datapath.qspec import PRESETS, QuantConfig
    from intssm.datapath.ranges import ranges_from_json

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    ok_json(intssm("qat", work["quant"], "--param", "discrete", "--epochs", "1", "--limit", "16", "--val-limit", "8",
                   "--lr", "1e-4", "-o", a, "--json"))
    ck_a = checkpoint.load_raw(a)
    assert QuantConfig.from_dict(ck_a["qspec"]["quant_config"]) == PRESETS["w8a8"]
    assert ck_a["qat"]["config"] == "from checkpoint"
    ok_json(intssm("qat", a, "--config", "w8a8-state6", "--param", "discrete", "--epochs", "1", "--limit", "16",
                   "--val-limit", "8", "--lr", "1e-4", "-o", b, "--json"))
    ck_b = checkpoint.load_raw(b)
    assert QuantConfig.from_dict(ck_b["qspec"]["quant_config"]) == PRESETS["w8a8-state6"]
    assert "re-quantized" in ck_b["qat"]["config"]
    ra, rb = ranges_from_json(ck_a["qspec"]["ranges"]), ranges_from_json(ck_b["qspec"]["ranges"])
    assert ra.keys() == rb.keys() and all(np.array_equal(ra[k][0], rb[k][0]) and np.array_equal(ra[k][1], rb[k][1]) for k in ra)
    assert ck_b["qspec"]["discrete"] is not None
    out = ok_json(intssm("simulate", b, "--limit", "12", "--verify", "all", "--json"))
    assert out["n_verified"] == out["bit_exact"] == 12


@pytest.mark.slow  # QAT option end to end (about 20-40 s); CI runs the slow profile
def test_qat_distillation_from_a_float_teacher(work, tmp_path):
    """`qat --distill A --teacher F` trains, records the setting, and the result simulates bit-exactly;
    bad distillation settings are one-line errors."""
    from intssm.training import checkpoint

    out = tmp_path / "kd.pt"
    ok_json(intssm("qat", work["float"], "--distill", "0.5", "--teacher", work["float"], "--epochs", "1", "--limit", "16",
                   "--val-limit", "8", "-o", out, "--json"))
    assert checkpoint.load_raw(out)["qat"]["distill"] == {"alpha": 0.5, "temp": 2.0, "teacher": str(work["float"])}
    r = ok_json(intssm("simulate", out, "--limit", "6", "--verify", "all", "--json"))
    assert r["n_verified"] == r["bit_exact"] == 6
    bad = tmp_path / "bad.pt"
    assert_clean_error(intssm("qat", work["float"], "--distill", "1.5", "-o", bad), "--distill")
    assert_clean_error(intssm("qat", work["float"], "--distill", "0.5", "--distill-temp", "0", "-o", bad), "--distill")
    assert_clean_error(intssm("qat", work["float"], "--teacher", work["float"], "-o", bad), "--teacher needs")
    assert_clean_error(intssm("qat", work["float"], "--distill", "0.5", "--teacher", work["quant"], "-o", bad), "float checkpoint")
    assert not bad.exists()


@pytest.mark.slow  # QAT option end to end (about 20-40 s); CI runs the slow profile
def test_qat_ema_weight_averaging(work, tmp_path):
    """`qat --ema D` scores the averaged weights each epoch, records the decay, and the kept model
    simulates bit-exactly; a decay outside [0, 1) is a one-line error."""
    from intssm.training import checkpoint

    out = tmp_path / "ema.pt"
    r = ok_json(intssm("qat", work["float"], "--ema", "0.9", "--epochs", "1", "--limit", "16", "--val-limit", "8",
                       "-o", out, "--json"))
    assert "val_int_acc_ema" in r["history"][1]
    assert r["best_val_int_acc"] == max(r["history"][0]["val_int_acc"], r["history"][1]["val_int_acc"],
                                        r["history"][1]["val_int_acc_ema"])
    assert checkpoint.load_raw(out)["qat"]["ema"] == 0.9
    s = ok_json(intssm("simulate", out, "--split", "val", "--limit", "8", "--verify", "all", "--json"))
    assert s["n_verified"] == s["bit_exact"] == 8 and s["accuracy"] == r["best_val_int_acc"]
    bad = tmp_path / "bad.pt"
    assert_clean_error(intssm("qat", work["float"], "--ema", "1", "-o", bad), "--ema")
    assert not bad.exists()


def test_simulate_verify0_uses_the_integer_model_cache_without_torch(work, tmp_path):
    """`simulate --verify 0` of a quantized checkpoint converts it once, then loads its integer
    arrays from the cache, without importing Torch: the same logits, counters and accuracy as a
    verified run; a damaged entry is rebuilt, a changed checkpoint gets its own entry, and an
    unwritable cache only costs the conversion."""
    import subprocess
    import sys

    from cli_helpers import ENV

    cache = tmp_path / "cache"
    env = dict(ENV, INTSSM_CACHE_DIR=str(cache))

    def sim(*extra, env=env):
        out = tmp_path / f"g{len(list(tmp_path.glob('g*.npz')))}.npz"
        r = subprocess.run([sys.executable, "-m", "intssm", "simulate", str(work["quant"]), "--limit", "30", *extra,
                            "--logits", str(out), "--json"], capture_output=True, text=True, env=env, timeout=300)
        res = ok_json(r)
        with np.load(out, allow_pickle=False) as z:
            return res, z["logits"], z["counters"]

    ref, lg_ref, c_ref = sim("--verify", "all")
    assert ref["bit_exact"] == ref["n_verified"] == 30
    assert not cache.exists()  # a verified run needs the Torch model: no cache involved
    first, lg1, c1 = sim("--verify", "0")
    entries = list((cache / "integer-models").glob("*.npz"))
    assert len(entries) == 1 and "from the cache" not in first["source"]
    second, lg2, c2 = sim("--verify", "0")
    assert "from the cache" in second["source"] and second["n_verified"] == 0
    for lg, c in ((lg1, c1), (lg2, c2)):
        assert np.array_equal(lg, lg_ref) and np.array_equal(c, c_ref)
    assert first["accuracy"] == second["accuracy"] == ref["accuracy"]
    code = ("import sys; from intssm import sources; im = sources.load(sys.argv[1], torch_model=False); "
            "assert im.qm is None and 'from the cache' in im.source; print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(work["quant"])], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]
    entries[0].write_bytes(b"not an artifact")  # damaged: converted again and rewritten
    third, lg3, _ = sim("--verify", "0")
    assert "from the cache" not in third["source"] and np.array_equal(lg3, lg_ref)
    assert "from the cache" in sim("--verify", "0")[0]["source"]
    changed = tmp_path / "q2.pt"
    changed.write_bytes(work["quant"].read_bytes() + b"\0")  # other bytes (a zip tolerates trailing data): another entry
    r = subprocess.run([sys.executable, "-m", "intssm", "simulate", str(changed), "--limit", "5", "--verify", "0", "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    ok_json(r)
    assert len(list((cache / "integer-models").glob("*.npz"))) == 2
    for e in (cache / "integer-models").glob("*.npz"):  # entries export.load accepts, whose manifest lacks a field
        with np.load(e, allow_pickle=False) as z:
            members = {k: z[k] for k in z.files}
        man = json.loads(members["manifest"].tobytes())
        del man["counters"]
        members["manifest"] = np.frombuffer(json.dumps(man).encode(), np.uint8)
        np.savez(e, **members)
    res, lg5, _ = sim("--verify", "0")
    assert np.array_equal(lg5, lg_ref) and "from the cache" not in res["source"]  # rebuilt
    assert "from the cache" in sim("--verify", "0")[0]["source"]
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    for bad in (blocked, tmp_path / ("x" * 300)):  # not a directory; a name the file system refuses
        res, lg4, _ = sim("--verify", "0", env=dict(ENV, INTSSM_CACHE_DIR=str(bad)))
        assert np.array_equal(lg4, lg_ref) and "from the cache" not in res["source"]


def test_export_refuses_an_artifact(exported, tmp_path):
    """`export` of an integer artifact (no Torch model, no scales to write) is one error line, not a
    traceback, and writes nothing."""
    out, _ = exported
    assert_clean_error(intssm("export", out, "-o", tmp_path / "again.npz"), "already an integer artifact")
    assert not (tmp_path / "again.npz").exists()
