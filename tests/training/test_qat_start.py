"""The QAT start (intssm.training.start): its measures agree with the simulator, the calibrated
start keeps the least-loss candidate on training sequences only, and the warnings fire where an
integer model is not what its float model was (at the QAT start, at its end, in `simulate`).

The data: short float sequences with rare large bursts (an idle level of ±0.25 and two bursts of
+12 per sequence), the shape of ACSF1's power readings at a tenth of their length."""

import json
import subprocess
import sys

import numpy as np
import pytest

from intssm import data
from intssm.datapath.qspec import get_config
from intssm.integer.export import from_quantized
from intssm.integer.score import int_accuracy
from intssm.integer.sim import simulate
from intssm.training import checkpoint, qat
from intssm.training.model import ModelConfig, S4DModel
from intssm.training.ptq import ptq_dataset
from intssm.training.start import (ACT_SITES, COLLAPSE_WARN, FAR_LOSS, calibrated_start, end_words, far_words,
                                   start_quality)
from intssm.datapath.layout import STATE_SATURATION_WARN, state_saturation_words


def bursts(n, L, rng):
    y = rng.integers(0, 2, n)
    x = (np.where(y == 1, 0.25, -0.25)[:, None] + 0.1 * rng.standard_normal((n, L))).astype(np.float32)
    for i in range(n):
        x[i, rng.integers(0, L, 2)] += 12.0
    return x[..., None], y


@pytest.fixture(scope="module")
def spiky(tmp_path_factory):
    """(dataset path, float checkpoint path): 24 training / 8 test sequences of 300 steps, and an
    untrained 1-layer d_model 4 model whose hetero-3b-x10 start saturates its state."""
    d = tmp_path_factory.mktemp("spiky")
    rng = np.random.default_rng(0)
    (xtr, ytr), (xte, yte) = bursts(24, 300, rng), bursts(8, 300, rng)
    p = d / "spiky.npz"
    np.savez(p, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    m = S4DModel(ModelConfig(d_model=4, d_state=8, n_layers=1, d_input=1, d_output=2), seed=0)
    ck = d / "f.pt"
    checkpoint.save(ck, m, quiet=True, dataset={"seq": str(p), "checksum": data.load(str(p), "train", None, 0.0).checksum,
                                                "val_fraction": 0.0})
    return str(p), ck


def test_start_quality_agrees_with_the_simulator(spiky):
    """start_quality's integer accuracy and saturation counts are the simulator's on the same codes,
    and its state-saturation share is the state counters over every state update."""
    seq, ck = spiky
    model, _ = checkpoint.load(ck)
    ds = data.load(seq, "train", None, 0.0)
    qm, _ = ptq_dataset(model.double(), get_config("hetero-3b-x10"), ds)
    q = start_quality(qm, ds)
    P = qm.input_codes(ds.x, ds.lengths)
    lg, cnt, _ = simulate(from_quantized(qm), P, lengths=ds.lengths)
    assert q["int_acc"] == float((lg.argmax(1) == ds.y).mean()) == int_accuracy(qm, P, ds.y, ds.lengths)
    assert q["saturations"] == {k: int(v) for k, v in zip(qm.counters, cnt.sum(0)) if v}
    state = q["saturations"].get("l0.x_re", 0) + q["saturations"].get("l0.x_im", 0)
    assert q["state_saturation"] == state / (2 * len(ds) * 300 * 4 * 4) > STATE_SATURATION_WARN
    assert 0 <= q["dead_zone_share"] <= 1


def test_calibrated_start_keeps_the_least_loss_on_training_sequences(spiky):
    """calibrated_start tries the config's own policies first, keeps the candidate of least integer
    loss (start_quality on the calibration sequences, recomputed here), and the kept model's datapath
    carries the chosen activation and input policies."""
    seq, ck = spiky
    model, _ = checkpoint.load(ck)
    ds = data.load(seq, "train", None, 0.0)
    qcfg = get_config("hetero-3b-x10")
    qm, ranges, how, tried = calibrated_start(model.double(), qcfg, ds)
    assert (tried[0]["input"], tried[0]["activations"]) == ("minmax", "minmax")
    assert {t["input"] for t in tried} == {"minmax", "p99.9"} and len(tried) == 8
    best = min(tried, key=lambda t: t["int_loss"])
    assert how == f"input {best['input']}, activations {best['activations']}"
    assert start_quality(qm, ds)["int_loss"] == best["int_loss"]
    assert all(getattr(qm.dp.qcfg, n).range == best["activations"] for n in ACT_SITES)
    assert qm.dp.qcfg.input_range == best["input"]


def test_warning_words_fire_at_their_thresholds():
    """far_words fires above FAR_LOSS nats over the float loss or STATE_SATURATION_WARN of clipped
    state updates, end_words below COLLAPSE_WARN under the float accuracy; at the thresholds, neither."""
    q = {"float_loss": 0.4, "float_acc": 0.8, "int_loss": 0.4 + FAR_LOSS, "int_acc": 0.8, "state_saturation": STATE_SATURATION_WARN}
    assert far_words(q) is None and end_words(q, q | {"int_acc": 0.8 - COLLAPSE_WARN + 1e-9}) is None
    assert "cross-entropy" in far_words(q | {"int_loss": 0.4 + FAR_LOSS + 1e-6})
    assert "saturates" in far_words(q | {"state_saturation": 2 * STATE_SATURATION_WARN})
    assert "scores 70.0%" in end_words(q, q | {"int_acc": 0.7})
    cfg = ModelConfig(d_model=4, d_state=8, n_layers=1)
    n = 10 * 100 * 4 * 4  # state updates of one site over 10 sequences of 100 steps
    assert state_saturation_words(cfg, {"l0.x_re": int(n * STATE_SATURATION_WARN)}, 1000, 10) == []
    assert len(state_saturation_words(cfg, {"l0.x_re": int(n * STATE_SATURATION_WARN) + 1, "l0.y": 10 ** 6}, 1000, 10)) == 1


def test_qat_warns_at_start_and_records_its_checks(spiky, tmp_path):
    """qat.run on the spiky data: the start's saturating state is reported before training (through
    on_warning, in order), both checks are stored in the checkpoint's qat entry, and --ranges
    calibrated is refused for an already quantized checkpoint."""
    seq, ck = spiky
    heard = []
    out = tmp_path / "q.pt"
    r = qat.run(ck, out, qat.QATArgs(config="hetero-3b-x10", epochs=1, batch_size=8, val_fraction=0.0), int_accuracy,
                progress=False, on_warning=heard.append)
    assert heard == r["warnings"] and heard[0].startswith("the quantized start is far from the float model")
    assert set(r["checks"]) == {"sequences", "start", "end"} and r["checks"]["sequences"] == 24
    _, saved = checkpoint.load(out)
    assert saved["qat"]["checks"]["start"]["int_loss"] == r["checks"]["start"]["int_loss"]
    with pytest.raises(Exception, match="--ranges calibrated applies to a float checkpoint"):
        qat.run(out, tmp_path / "q2.pt", qat.QATArgs(ranges="calibrated"), int_accuracy, progress=False)


def test_cli_qat_ranges_and_simulate_warnings(spiky, tmp_path):
    """`intssm qat --ranges bogus` is one error line and exit 2; `intssm simulate` of a model whose
    state saturates on more than 0.1% of its updates prints a warning naming the state site."""
    seq, ck = spiky
    r = subprocess.run([sys.executable, "-m", "intssm", "qat", str(ck), "-o", str(tmp_path / "q.pt"), "--ranges", "bogus"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --ranges must be one of config, calibrated, got 'bogus'"]
    q = tmp_path / "p.pt"
    subprocess.run([sys.executable, "-m", "intssm", "ptq", str(ck), "-o", str(q), "--config", "hetero-3b-x10"],
                   capture_output=True, text=True, timeout=120, check=True)
    r = subprocess.run([sys.executable, "-m", "intssm", "simulate", str(q), "--seq", seq, "--split", "train", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    w = json.loads(r.stdout)["warnings"]
    assert w and all(x.startswith("state l0.x_") for x in w)
