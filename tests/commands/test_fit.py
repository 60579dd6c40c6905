"""`intssm fit` (intssm/fit.py) and the step-budgeted training it runs (intssm/training/train.py)."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from cli_helpers import assert_clean_error, intssm, ok_json
from intssm.fit import FitOptions, cv_summary, fit, kfold
from intssm.training.model import ModelConfig, S4DModel
from intssm.training.train import fold_standardisation, lr_factor, standardisation


def _tiny(path, test_labels=None, seed=0):
    """Two classes told apart by the sign of a slow drift in channel 0, on a large offset and scale
    (what standardisation is for); 30 training and 16 test sequences of 16 steps, 2 channels."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = np.arange(n) % 2
        t = np.linspace(0, 1, 16)[None, :, None]
        x = rng.normal(0, 0.3, (n, 16, 2)) + (2 * y - 1)[:, None, None] * t * np.array([1.0, 0.0])
        return (100 + 20 * x).astype(np.float32), y.astype(np.int64)

    xtr, ytr = make(30)
    xte, yte = make(16)
    if test_labels is not None:
        yte = test_labels(yte)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path


@given(st.lists(st.integers(0, 3), min_size=8, max_size=60), st.integers(2, 5))
def test_kfold_partitions_and_stratifies(y, k):
    """Every sequence is in exactly one validation fold, train and validation are complements, and
    each class is dealt evenly: its count in two folds differs by at most one."""
    y = np.array(y)
    folds = kfold(y, k)
    seen = np.concatenate([v for _, v in folds])
    assert sorted(seen.tolist()) == list(range(len(y)))
    for tr, va in folds:
        assert not set(tr) & set(va) and len(tr) + len(va) == len(y)
    for c in np.unique(y):
        counts = [int((y[va] == c).sum()) for _, va in folds]
        assert max(counts) - min(counts) <= 1


def test_standardisation_folds_into_the_encoder():
    """The model trained on (u - mu) / sd, with the standardisation folded into its encoder, gives
    the same logits on the raw u (float64, to rounding); padding steps do not enter mu and sd."""
    rng = np.random.default_rng(1)
    x = rng.normal(50, 7, (6, 12, 3)) * np.array([1, 10, 0.1])
    lens = np.array([12, 5, 12, 3, 8, 12])
    x[1, 5:] = 1e6  # padding: must not move the statistics
    mu, sd = standardisation(x, lens)
    valid = np.concatenate([x[i, : lens[i]] for i in range(6)])
    np.testing.assert_allclose(mu, valid.mean(0))
    np.testing.assert_allclose(sd, valid.std(0))
    m = S4DModel(ModelConfig(d_input=3, d_output=4, d_model=8, d_state=8, pool="last"), seed=0).double()
    ref = m(torch.from_numpy((x - mu) / sd), lengths=torch.from_numpy(lens))
    fold_standardisation(m, mu, sd)
    got = m(torch.from_numpy(x), lengths=torch.from_numpy(lens))
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_schedule_warms_up_then_decays_to_zero():
    """Linear warm-up reaching 1 at the last warm-up step, then a monotone cosine down to 0 at the end."""
    f = [lr_factor(s, 100, 10) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[10] == 1.0
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[100] == pytest.approx(0.0, abs=1e-12)


def test_cv_summary_picks_the_best_mean_step():
    """The mean over folds at each step, a fold stopped early holding its last score."""
    runs = [{"curve": [{"step": 10, "val_acc": 0.5, "val_loss": 1.0}, {"step": 20, "val_acc": 1.0, "val_loss": 0.5}]},
            {"curve": [{"step": 10, "val_acc": 0.75, "val_loss": 0.8}]}]
    s = cv_summary(runs, 20)
    assert s["step"] == 20 and s["val_acc"] == pytest.approx(0.875)


def _strip(o):
    """A card's choices without wall-clock seconds and file paths."""
    if isinstance(o, dict):
        return {k: _strip(v) for k, v in o.items() if k not in ("seconds", "checkpoint", "fold_seconds")}
    if isinstance(o, list):
        return [_strip(v) for v in o]
    return o


SMALL = dict(steps=40, folds=2, qat_steps=8, max_minutes=30.0,
             candidates=[{"d_model": 4, "n_layers": 1, "dropout": 0.0}, {"d_model": 8, "n_layers": 1, "dropout": 0.1}],
             ladder=["hetero-3b-x10", "w8a8-state12"])


def test_poisoned_test_labels_change_no_choice(tmp_path):
    """The test split is never used for a choice: with the test labels scrambled, every selection
    score, the chosen float model and step, every quantization score and the chosen preset are
    identical, and so are the float and integer weights; only the test accuracies may move."""
    a = _tiny(tmp_path / "a.npz")
    b = _tiny(tmp_path / "b.npz", test_labels=lambda y: 1 - y)
    ca = fit(str(a), tmp_path / "fa", FitOptions(**SMALL), say=lambda m: None)
    cb = fit(str(b), tmp_path / "fb", FitOptions(**SMALL), say=lambda m: None)
    for stage in ("select", "float", "quantize"):
        assert _strip(ca["stages"][stage]) == _strip(cb["stages"][stage]), stage
    assert ca["stages"]["verify"]["results"]["selection"] == cb["stages"]["verify"]["results"]["selection"]
    for p in ca["stages"]["quantize"]["points"]:  # the better of PTQ and QAT on the selection sequences is kept
        assert p["selection_int_acc"] == max(p["ptq_acc"], p.get("qat_acc", 0.0))
    ta, tb = (c["stages"]["verify"]["results"]["test"] for c in (ca, cb))
    assert ta["int_acc"] == pytest.approx(1 - tb["int_acc"])  # the same predictions, scored against flipped labels
    for f in ("float.pt", "int.pt"):
        wa = torch.load(tmp_path / "fa" / f, weights_only=True)["state_dict"]
        wb = torch.load(tmp_path / "fb" / f, weights_only=True)["state_dict"]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fit_command_end_to_end(tmp_path):
    """`intssm fit` on a tiny float dataset: a float and an integer checkpoint, the artifact, the C
    export, card.md / card.json / front.png; the integer model bit-exact on every selection and test
    sequence, and the card's test accuracy is the one `intssm simulate` measures on its own."""
    d = _tiny(tmp_path / "t.npz")
    out = tmp_path / "fit"
    r = ok_json(intssm("fit", "--seq", d, "-o", out, "--steps", 40, "--folds", 2, "--qat-steps", 8, "--max-drop", 100, "--json", timeout=600))
    card = r["card"]
    assert card["status"] == "done"
    for f in ("float.pt", "int.pt", "model.npz", "card.md", "card.json", "front.png", "c/intssm_model.c"):
        assert (out / f).is_file(), f
    v = card["stages"]["verify"]["results"]
    assert v["selection"]["bit_exact"] == v["selection"]["n"] == 30
    assert v["test"]["bit_exact"] == v["test"]["n"] == 16
    assert json.loads((out / "card.json").read_text())["stages"]["verify"]["results"] == v
    assert "never read before every choice was made" in (out / "card.md").read_text()
    sim = ok_json(intssm("simulate", out / "int.pt", "--seq", d, "--verify", "all", "--json"))
    assert sim["accuracy"] == v["test"]["int_acc"] and sim["bit_exact"] == 16
    assert card["stages"]["select"]["chosen"] in [c["name"] for c in card["stages"]["select"]["candidates"]]


@pytest.mark.parametrize("args,fragment", [
    (["--max-drop", "-1"], "--max-drop"),
    (["--max-minutes", "0"], "--max-minutes"),
    (["--folds", "1"], "--folds"),
    (["--target", "avr"], "--target"),
])
def test_fit_refuses_bad_options(tmp_path, args, fragment):
    """Bad options end in one error line and exit 2 before any work (no output folder written)."""
    d = _tiny(tmp_path / "t.npz")
    r = intssm("fit", "--seq", d, "-o", tmp_path / "o", *args)
    assert_clean_error(r, fragment)
    assert not (tmp_path / "o").exists()


def test_eval_and_simulate_take_the_models_own_data(tmp_path):
    """Without --seq, eval and simulate score the model's own dataset; other data of the same
    shape (another checksum) are refused unless --other-data is given; a stop by the time budget
    is said in words. (In process, through Typer's runner: the exit codes of the error path are
    those of every IntssmError, tests/commands/test_hostile.py.)"""
    from typer.testing import CliRunner

    from intssm import data
    from intssm.cli import app
    from intssm.errors import IntssmError
    from intssm.training import checkpoint

    a, b = _tiny(tmp_path / "a.npz"), _tiny(tmp_path / "b.npz", seed=1)
    f = tmp_path / "f.pt"
    m = S4DModel(ModelConfig(d_input=2, d_output=2, d_model=4, d_state=8), seed=0)
    checkpoint.save(f, m, dataset={"seq": str(a), "checksum": data.load(str(a)).checksum, "val_fraction": None})
    run = lambda *args: CliRunner().invoke(app, [str(x) for x in args])  # noqa: E731
    r = run("eval", f, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout.strip().splitlines()[-1])["seq"] == str(a)
    r = run("eval", f, "--seq", b)
    assert isinstance(r.exception, IntssmError) and "--other-data" in str(r.exception)
    r = run("eval", f, "--seq", b, "--other-data", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout.strip().splitlines()[-1])["seq"] == str(b)
    r = run("simulate", f, "--verify", 0, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout.strip().splitlines()[-1])["seq"] == str(a)
    r = run("simulate", f, "--seq", b, "--verify", 0)
    assert isinstance(r.exception, IntssmError) and "--other-data" in str(r.exception)
    r = run("train", "--seq", a, "--preset", "tiny", "--epochs", 1000, "--max-minutes", 0.0001, "-o", tmp_path / "g.pt")
    assert r.exit_code == 0 and "stopped by the time budget of 0.0001 min in epoch 1 of 1000" in r.stdout


def test_integer_warnings():
    """A state clipped on more than 0.1% of its updates, or an integer accuracy more than 5 points
    below the float model's, is warned about; a clean model gets no warning."""
    from intssm.fit import integer_warnings

    clean = {"saturation_rates": {"l0.x_re": 1e-4, "l0.y": 0.5}, "int_acc": 0.9, "float_acc": 0.92}
    assert integer_warnings(clean) == []
    w = integer_warnings({"saturation_rates": {"l0.x_im": 2e-3}, "int_acc": 0.5, "float_acc": 0.9})
    assert len(w) == 2 and "l0.x_im" in w[0] and "40.0 points" in w[1]


def test_qat_without_validation_shows_train_integer_accuracy(tmp_path):
    """QAT with no validation split records the integer accuracy on the training sequences each
    epoch (not null), equal to the simulator's on the weights it keeps (the last epoch's)."""
    from intssm import data
    from intssm.training import checkpoint
    from intssm.integer.score import int_accuracy
    from intssm.training.qat import QATArgs, restore, start_from
    from intssm.training.qat import train as run_qat

    a = _tiny(tmp_path / "a.npz")
    f = tmp_path / "f.pt"
    m = S4DModel(ModelConfig(d_input=2, d_output=2, d_model=4, d_state=8), seed=0)
    checkpoint.save(f, m, dataset={"seq": str(a), "checksum": data.load(str(a)).checksum, "val_fraction": 0.0})
    st = start_from(f, "w8a8", 64)
    best, history, _ = run_qat(st.qm, str(a), QATArgs(epochs=2, batch_size=8, val_fraction=0.0), int_accuracy)
    assert [h["val_int_acc"] for h in history] == [None] * 3
    assert all(0 <= h["train_int_acc"] <= 1 for h in history)
    restore(st.qm, best)
    tr = data.load(str(a), "train", None, 0.0)
    assert history[-1]["train_int_acc"] == int_accuracy(st.qm, st.qm.input_codes(tr.x, tr.lengths), tr.y, tr.lengths)


def test_one_standard_error_rule_prefers_the_smaller_model():
    """Within one binomial standard error of the best accuracy the fewest parameters win; a
    candidate outside it never does, however small."""
    from intssm.fit import one_se_choice

    rows = [{"name": "big", "val_acc": 0.96, "val_loss": 0.1, "params": 9000},
            {"name": "mid", "val_acc": 0.95, "val_loss": 0.2, "params": 7000},
            {"name": "tiny", "val_acc": 0.90, "val_loss": 0.3, "params": 1000}]
    best, se = one_se_choice(rows, 300)  # p = 289 / 302, se = sqrt(p (1 - p) / 300) = 1.17 points
    assert se == pytest.approx(0.0117, abs=1e-4) and best["name"] == "mid"
    assert one_se_choice(rows, 100000)[0]["name"] == "big"  # a tight estimate: the difference is real
    perfect = [dict(rows[0], val_acc=1.0), dict(rows[1], val_acc=0.98)]
    best, se = one_se_choice(perfect, 40)  # a perfect score still has an error: 2.4 points at n = 40
    assert se == pytest.approx(0.0241, abs=1e-4) and best["name"] == "mid"


def test_resume_reuses_the_completed_stages(tmp_path):
    """--resume after a run that stopped after its float stage reuses selection and float model
    (not retrained: their records are the first run's) and ends with the same choices; a resume on
    other options is refused."""
    a = _tiny(tmp_path / "a.npz")
    out = tmp_path / "f"
    first = fit(str(a), out, FitOptions(**SMALL), say=lambda m: None)
    card = json.loads((out / "card.json").read_text())
    for k in ("quantize", "verify"):
        del card["stages"][k]
    card["status"] = "interrupted"
    (out / "card.json").write_text(json.dumps(card))
    said = []
    again = fit(str(a), out, FitOptions(**SMALL, resume=True), say=said.append)
    assert any(m.startswith("[1/5 select] reused") for m in said) and any(m.startswith("[2/5 float] reused") for m in said)
    assert again["stages"]["select"] == first["stages"]["select"] and again["stages"]["float"] == first["stages"]["float"]
    assert _strip(again["stages"]["quantize"]) == _strip(first["stages"]["quantize"])
    with pytest.raises(Exception, match="other options"):
        fit(str(a), out, FitOptions(**(SMALL | {"steps": 41}), resume=True), say=lambda m: None)


def test_budget_leaves_out_candidates_before_training(tmp_path):
    """--budget-bytes drops the float candidates whose smallest preset cannot fit it, and refuses
    before any training when none can; an interrupt leaves a card marked interrupted."""
    from intssm.errors import IntssmError

    a = _tiny(tmp_path / "a.npz")
    with pytest.raises(IntssmError, match="--budget-bytes 100"):
        fit(str(a), tmp_path / "f", FitOptions(**SMALL, budget_bytes=100), say=lambda m: None)
    assert not (tmp_path / "f" / "float.pt").exists()

    def stop_at_selection(msg):  # only the choice of candidates matters here: Ctrl-C as selection starts
        if msg.startswith("[1/5"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(str(a), tmp_path / "g", FitOptions(**SMALL, budget_bytes=1500), say=stop_at_selection)
    card = json.loads((tmp_path / "g" / "card.json").read_text())
    assert card["status"] == "interrupted" and list(card["budget_dropped"]) == ["d_model 8, 1 layer, dropout 0.1"]
