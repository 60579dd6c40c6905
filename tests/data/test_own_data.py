"""Any user's sequences: the .ts reader, per-sequence lengths, the stratified split, float inputs
through the input quantizer, and the three executions (Torch quantized, Numba, C) on them.

Every property here compares integers with ``==``; padding is checked never to change a logit.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import intssm
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from intssm import data
from intssm.errors import IntssmError
from intssm.integer.export import from_quantized
from intssm.datapath.inputq import InputQuant, calibrate_input, fold_input
from intssm.training.model import ModelConfig, S4DModel
from intssm.training.ptq import ptq_dataset
from intssm.training.qmodel import QuantS4D
from intssm.integer.sim import simulate
from intssm.data.tsformat import read_ts

from c_helpers import build_harness, run_c
from strategies import models, quant_configs

ROOT = Path(__file__).resolve().parents[2]
UEA = ROOT / "data" / "uea"
BM, JV = UEA / "BasicMotions", UEA / "JapaneseVowels"


# ------------------------------------------------------------------------------ the .ts reader ---

@pytest.mark.parametrize("split,n", [("TRAIN", 40), ("TEST", 40)])
def test_ts_basicmotions(split, n):
    """The BasicMotions .ts split reads as (n, 100, 6) float32 with the declared class order,
    balanced labels, the problem name, and the first values of the file."""
    t = read_ts(BM / f"BasicMotions_{split}.ts")
    assert t.x.shape == (n, 100, 6) and t.x.dtype == np.float32
    assert (t.lengths == 100).all()
    assert t.classes == ["Standing", "Running", "Walking", "Badminton"]
    assert np.bincount(t.y).tolist() == [10, 10, 10, 10]
    assert t.problem == "BasicMotions"
    first = (BM / f"BasicMotions_{split}.ts").read_text().split("@data")[1].strip().splitlines()[0]
    assert t.x[0, :3, 0].tolist() == pytest.approx([float(v) for v in first.split(":")[0].split(",")[:3]])


def test_ts_japanesevowels_unequal_lengths():
    """JapaneseVowels reads with its 270/370 cases, 12 channels, 9 balanced classes and lengths
    7..29; padding after each series is zero and each series' last step is not."""
    tr, te = read_ts(JV / "JapaneseVowels_TRAIN.ts"), read_ts(JV / "JapaneseVowels_TEST.ts")
    assert tr.x.shape[0] == 270 and te.x.shape[0] == 370 and tr.x.shape[2] == te.x.shape[2] == 12
    assert tr.classes == [str(i) for i in range(1, 10)]
    assert np.bincount(tr.y).tolist() == [30] * 9  # 30 utterances per speaker (header comment)
    lens = np.concatenate([tr.lengths, te.lengths])
    assert lens.min() == 7 and lens.max() == 29  # "series lengths between 7 and 29"
    for t in (tr, te):  # padding after each series' end is zero; the series' own values are not all zero
        for i in range(len(t.y)):
            assert not t.x[i, t.lengths[i]:].any() and t.x[i, t.lengths[i] - 1].any()


HEAD = "@problemName T\n@timeStamps false\n@missing false\n@univariate false\n@dimensions 2\n@equalLength false\n@classLabel true a b\n"


@pytest.mark.parametrize("body,fragment", [
    ("@data\n1,2:3,4:a\n1,2,3:a\n", "1 channels, expected 2"),
    ("@data\n1,2:3,4,5:a\n", "channels have different lengths"),
    ("@data\n1,?:3,4:a\n", "missing value"),
    ("@data\n1,NaN:3,4:a\n", "NaN or infinite"),
    ("@data\n1,x2:3,4:a\n", "non-numeric value"),
    ("@data\n1,2:3,4:c\n", "label 'c' is not one of"),
    ("@data\n1,2::a\n", "empty series"),
    ("1,2:3,4:a\n", "expected a header line"),
    ("", "no @data line"),
    ("@data\n", "no cases after @data"),
])
def test_ts_malformed(tmp_path, body, fragment):
    """A malformed .ts body is refused with an IntssmError naming the fault."""
    p = tmp_path / "T_TRAIN.ts"
    p.write_text(HEAD + body)
    with pytest.raises(IntssmError, match=fragment):
        read_ts(p)


def test_ts_header_refusals(tmp_path):
    """A .ts header with time stamps, a regression target or a non-integer @dimensions is refused
    with a message naming it."""
    p = tmp_path / "T_TRAIN.ts"
    p.write_text(HEAD.replace("@timeStamps false", "@timeStamps true") + "@data\n(1,2):a\n")
    with pytest.raises(IntssmError, match="timeStamps true"):
        read_ts(p)
    p.write_text(HEAD.replace("@classLabel true a b", "@targetLabel true") + "@data\n1:2\n")
    with pytest.raises(IntssmError, match="regression"):
        read_ts(p)
    p.write_text(HEAD.replace("@dimensions 2", "@dimensions two") + "@data\n1:2:a\n")
    with pytest.raises(IntssmError, match="@dimensions must be a positive integer"):
        read_ts(p)


def test_ts_cli_one_error_line(tmp_path):
    """Bad input through the CLI: exit 2 and one ``error:`` line, no traceback."""
    (tmp_path / "T_TRAIN.ts").write_text(HEAD + "@data\n1,?:3,4:a\n")
    (tmp_path / "T_TEST.ts").write_text(HEAD + "@data\n1,2:3,4:a\n")
    r = subprocess.run([sys.executable, "-m", "intssm", "train", "--seq", str(tmp_path), "--preset", "tiny",
                        "--epochs", "1", "-o", str(tmp_path / "m.pt")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing value" in lines[0]
    assert not (tmp_path / "m.pt").exists()


def test_ts_dataset_by_directory_or_train_file():
    """A .ts dataset named by its directory or by its TRAIN file loads the same arrays, lengths and
    checksum."""
    a, b = data.load(str(JV), "test"), data.load(str(JV / "JapaneseVowels_TRAIN.ts"), "test")
    assert np.array_equal(a.x, b.x) and np.array_equal(a.lengths, b.lengths) and a.checksum == b.checksum
    assert a.varlen and a.classes[0] == "1"


# ----------------------------------------------------------------------- splits and .npz lengths ---

@given(st.lists(st.integers(2, 9), min_size=2, max_size=6), st.sampled_from([0.1, 0.2, 0.5, 0.9]))
def test_stratified_split_keeps_every_class(counts, frac):
    """Every class with >= 2 sequences has >= 1 in each part; parts are disjoint and cover all; seeded."""
    y = np.repeat(np.arange(len(counts)), counts)
    tr, va = data.stratified_split(y, frac)
    assert np.intersect1d(tr, va).size == 0 and len(tr) + len(va) == len(y)
    for c, n in enumerate(counts):
        k = int((y[va] == c).sum())
        assert 1 <= k <= n - 1
        assert k == min(max(1, round(frac * n)), n - 1)
    assert np.array_equal(va, data.stratified_split(y, frac)[1])


def test_val_fraction_zero_means_no_validation(tmp_path):
    """--val-fraction 0 gives an empty validation split and every sequence in training; a fraction
    of 1 is refused."""
    ds = data.load(str(BM), "val", val_fraction=0.0)
    assert len(ds) == 0 and len(data.load(str(BM), "train", val_fraction=0.0)) == 40
    with pytest.raises(IntssmError, match="val-fraction"):
        data.load(str(BM), "val", val_fraction=1.0)


def _npz(tmp_path, **kw):
    rng = np.random.default_rng(0)
    arrs = dict(x_train=rng.normal(size=(12, 6, 3)).astype(np.float32), y_train=np.arange(12) % 3,
                x_test=rng.normal(size=(5, 6, 3)).astype(np.float32), y_test=np.arange(5) % 3)
    arrs.update(kw)
    p = tmp_path / "d.npz"
    np.savez(p, **arrs)
    return p


def test_npz_lengths(tmp_path):
    """An .npz with len_train/len_test gives those per-sequence lengths (variable-length data)."""
    p = _npz(tmp_path, len_train=np.arange(12) % 6 + 1, len_test=np.array([6, 1, 2, 3, 4]))
    te = data.load(str(p), "test")
    assert te.lengths.tolist() == [6, 1, 2, 3, 4] and te.varlen
    tr = data.load(str(p), "train")
    assert set(tr.lengths.tolist()) <= set(range(1, 7))


@pytest.mark.parametrize("kw,fragment", [
    (dict(len_train=np.full(11, 3)), "len_train must be an integer array of shape"),
    (dict(len_train=np.full(12, 7)), "must lie in 1..6"),
    (dict(len_test=np.zeros(5, np.int64)), "must lie in 1..6"),
    (dict(len_test=np.full(5, 2.0)), "integer array"),
])
def test_npz_lengths_refused(tmp_path, kw, fragment):
    """len_train/len_test of the wrong shape, type or range are refused with a message naming them."""
    with pytest.raises(IntssmError, match=fragment):
        data.load(str(_npz(tmp_path, **kw)), "test")


# ------------------------------------------------------------------ float model: padding is inert ---

@settings(max_examples=15)
@given(st.integers(1, 5), st.sampled_from(["mean", "last"]), st.integers(0, 2**16))
def test_padding_never_changes_a_float_logit(d_in, pool, seed):
    """Conv mode == recurrent mode with lengths, and any values in the padding leave the logits alone."""
    cfg = ModelConfig(d_input=d_in, d_output=3, d_model=4, d_state=6, n_layers=2, pool=pool)
    m = S4DModel(cfg, seed=seed).double().eval()
    rng = np.random.default_rng(seed)
    B, L = 5, 9
    lens = torch.from_numpy(rng.integers(1, L + 1, B))
    u = torch.from_numpy(rng.normal(size=(B, L, d_in)))
    u2 = u.clone()
    for b in range(B):
        u2[b, lens[b]:] = torch.from_numpy(rng.normal(size=(L - int(lens[b]), d_in)) * 100)
    with torch.no_grad():
        conv, rec, conv2 = m(u, lengths=lens), m(u, "recurrent", lens), m(u2, lengths=lens)
        alone = torch.cat([m(u[b:b + 1, : lens[b]]) for b in range(B)])  # each sequence on its own
    torch.testing.assert_close(conv, rec, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(conv, conv2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(conv, alone, rtol=1e-9, atol=1e-9)


# ---------------------------------------------- integer datapath: float inputs, d_in, lengths ---

def test_input_quantizer_codes_and_fold():
    """Codes are round-half-up of (u - lo) / s, clipped to [0, 2**b - 1]; the folded float model on
    codes / 255 equals the original on the dequantized inputs."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 7, 3)) * np.array([1.0, 100.0, 0.01])
    lens = np.array([7, 3, 1, 5])
    iq = calibrate_input(x, lens, 6)
    q = iq.codes(x, lens)
    assert q.dtype == np.uint8 and q.max() <= 63
    valid = np.arange(7)[None, :] < lens[:, None]
    assert (q[~valid] == 0).all()
    want = np.clip(np.floor((x - iq.lo) / iq.scale + 0.5), 0, 63)
    assert np.array_equal(q[valid], want[valid])
    m = S4DModel(ModelConfig(d_input=3, d_output=2, d_model=4, d_state=4), seed=1).double().eval()
    f = fold_input(m, iq)
    with torch.no_grad():
        a = m(torch.from_numpy(iq.dequantize(q)), lengths=torch.from_numpy(lens))
        b = f(torch.from_numpy(q / 255.0), lengths=torch.from_numpy(lens))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert InputQuant.from_dict(iq.to_dict()).to_dict() == iq.to_dict()
    with pytest.raises(IntssmError, match="bits must be"):
        InputQuant.from_dict({"bits": 9, "lo": [0.0], "scale": [1.0]})
    with pytest.raises(IntssmError, match="finite and positive"):
        InputQuant.from_dict({"bits": 8, "lo": [0.0], "scale": [float("nan")]})


@settings(max_examples=25)
@given(models(max_layers=2), quant_configs(), st.data())
def test_torch_equals_numba_on_any_inputs(m, qcfg, draw):
    """Torch quantized == Numba fast == Numba reference, as integers (logits and counters), for
    d_in in 1..16, float or uint8 inputs, unequal lengths; padding never changes a logit, and each
    sequence run alone equals its row of the batch."""
    d_in = draw.draw(st.integers(1, 16))
    pool = draw.draw(st.sampled_from(["last", "last", "mean"]))
    cfg = ModelConfig(**{**m.cfg.to_dict(), "d_input": d_in, "pool": pool})
    m = S4DModel(cfg, seed=draw.draw(st.integers(0, 99))).double()
    rng = np.random.default_rng(draw.draw(st.integers(0, 2**16)))
    B, L = draw.draw(st.integers(1, 5)), draw.draw(st.integers(1, 10))
    lens = rng.integers(1, L + 1, B) if cfg.pool == "last" else np.full(B, L)
    floats = draw.draw(st.booleans())
    x = (rng.normal(size=(B, L, d_in)) * rng.choice([0.1, 1.0, 30.0], d_in)).astype(np.float32) if floats \
        else rng.integers(0, 256, (B, L, d_in)).astype(np.uint8)
    ds = data.SeqData(x, np.zeros(B, np.int64), "h", "", lens)
    try:
        qm, _ = ptq_dataset(m, qcfg, ds)
    except IntssmError as e:  # configurations beyond the exact range are refused, never run
        assert "2**53" in str(e) or "too large" in str(e) or "shifts <= 32" in str(e)
        assume(False)
    P = qm.input_codes(x, lens)
    with torch.no_grad():
        lt, ct = qm(torch.from_numpy(P), counts=True, lengths=torch.from_numpy(lens))
    arr = from_quantized(qm)
    mean = cfg.pool == "mean"
    ls, cs, _ = simulate(arr, P, lengths=lens)
    lr, cr, _ = simulate(arr, P, lengths=lens, reference=True)
    assert np.array_equal(ls, lr) and np.array_equal(cs, cr)
    assert np.array_equal(lt.numpy().astype(np.int64), ls)
    assert [ct[k] for k in qm.counters] == cs.sum(0).tolist()
    P2 = P.copy()
    for b in range(B):
        P2[b, lens[b]:] = rng.integers(0, 256, (L - lens[b], d_in))
    ls2, cs2, _ = simulate(arr, P2, lengths=lens)
    with torch.no_grad():
        lt2, _ = qm(torch.from_numpy(P2), lengths=torch.from_numpy(lens))
    assert np.array_equal(ls2, ls) and np.array_equal(cs2, cs) and np.array_equal(lt2.numpy().astype(np.int64), ls)
    if not mean:
        for b in range(B):
            l1, c1, _ = simulate(arr, P[b:b + 1, : lens[b]])
            assert np.array_equal(l1[0], ls[b]) and np.array_equal(c1[0], cs[b])


def test_mean_pool_refuses_variable_lengths():
    """A mean-pooling model refuses variable-length sequences, in the simulator and in the Torch
    quantized model alike."""
    m = S4DModel(ModelConfig(d_input=2, d_output=2, d_model=2, d_state=2, pool="mean")).double()
    x = np.random.default_rng(0).normal(size=(3, 5, 2)).astype(np.float32)
    qm, _ = ptq_dataset(m, __import__("intssm.datapath.qspec", fromlist=["PRESETS"]).PRESETS["w8a8"],
                        data.SeqData(x, np.zeros(3, np.int64), "h", ""))
    P, lens = qm.input_codes(x), np.array([5, 3, 5])
    with pytest.raises(IntssmError, match="pool 'last'"):
        simulate(from_quantized(qm), P, lengths=lens)
    with pytest.raises(IntssmError, match="pool 'last'"):
        qm(torch.from_numpy(P), lengths=torch.from_numpy(lens))


def test_model_kind_must_match_the_data():
    """A float-data model refuses uint8 data and the wrong feature count; a uint8 model refuses the
    wrong feature count."""
    m = S4DModel(ModelConfig(d_input=2, d_output=2, d_model=2, d_state=2)).double()
    x = np.random.default_rng(0).normal(size=(3, 5, 2)).astype(np.float32)
    qm, _ = ptq_dataset(m, __import__("intssm.datapath.qspec", fromlist=["PRESETS"]).PRESETS["w8a8"],
                        data.SeqData(x, np.zeros(3, np.int64), "h", ""))
    with pytest.raises(IntssmError, match="uint8"):
        qm.input_codes(np.zeros((1, 5, 2), np.uint8))
    with pytest.raises(IntssmError, match="features per step"):
        qm.input_codes(np.zeros((1, 5, 3), np.float32))
    qm = QuantS4D(qm.model, qm.dp)  # the same datapath for raw uint8 data (the identity input quantizer)
    with pytest.raises(IntssmError, match="features per step, the model expects 2"):
        qm.input_codes(np.zeros((1, 5, 3), np.uint8))


# ------------------------------------------------------------------ the real datasets, end to end ---

def _cli(*args, cwd=None):
    return intssm(*args, cwd=cwd)


@pytest.mark.parametrize("ds,preset,epochs", [(BM, "tiny", 3), (JV, "tiny", 3)])
def test_end_to_end_real_dataset(tmp_path, ds, preset, epochs):
    """train -> ptq -> simulate --verify all -> export -> simulate the artifact, on the real files."""
    f, q, a = tmp_path / "f.pt", tmp_path / "q.pt", tmp_path / "m.npz"
    r = _cli("train", "--seq", ds, "--preset", preset, "--epochs", epochs, "-o", f, "--json")
    assert r.returncode == 0, r.stderr
    r = _cli("ptq", f, "--config", "paper-hetero", "-o", q, "--json")
    assert r.returncode == 0, r.stderr
    import json

    r = _cli("simulate", q, "--seq", ds, "--verify", "all", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    n_test = {"BasicMotions": 40, "JapaneseVowels": 370}[ds.name]
    assert res["n"] == res["n_verified"] == res["bit_exact"] == n_test
    assert _cli("export", q, "-o", a).returncode == 0
    r2 = _cli("simulate", a, "--seq", ds, "--json")
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["accuracy"] == res["accuracy"]
    r3 = _cli("simulate", q, "--seq", "smnist", "--limit", "5")
    assert r3.returncode == 2 and r3.stderr.count("error:") == 1 and "Traceback" not in r3.stderr


def test_train_takes_the_ends_from_the_data(tmp_path):
    """train takes the features per step, classes and last-step pooling from a variable-length
    dataset, records val_fraction 0, and eval refuses data with another feature count."""
    import json

    from intssm.training import checkpoint

    f = tmp_path / "f.pt"
    r = _cli("train", "--seq", JV, "--preset", "tiny", "--epochs", "1", "--val-fraction", "0", "-o", f, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["val_acc"] is None
    m, ck = checkpoint.load(f)
    assert (m.cfg.d_input, m.cfg.d_output, m.cfg.pool) == (12, 9, "last")
    assert ck["dataset"]["val_fraction"] == 0.0
    r = _cli("eval", f, "--seq", BM)
    assert r.returncode == 2 and "6 features per step, the model expects 12" in r.stderr
    q = tmp_path / "q.pt"
    assert _cli("ptq", f, "-o", q).returncode == 0
    r = _cli("simulate", q, "--seq", BM)
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "features per step" in r.stderr


# ------------------------------------------------------------------------ C on the real datasets ---

def _c_equals_simulator(qm, P, lens, tmp: Path):
    """Run the exported C (harness of test_cexport) per length group; logits, counters and final
    state equal the simulator's, each sequence stepped exactly lengths[b] times."""
    arr = from_quantized(qm)
    exe = build_harness(arr, tmp)
    assert "Inputs: float features quantized per channel" in (tmp / "intssm_model.h").read_text() or not arr.float_input
    lg, cnt, _ = simulate(arr, P, lengths=lens)
    for L in np.unique(lens):
        idx = np.flatnonzero(lens == L)
        c = run_c(exe, np.ascontiguousarray(P[idx, :L]), arr)
        assert np.array_equal(c["logits"], lg[idx]) and np.array_equal(c["logits2"], lg[idx])
        assert np.array_equal(c["counts"], cnt[idx])
        for j, b in enumerate(idx[:3]):
            _, _, (tr, ti) = simulate(arr, P[b:b + 1], trace=True, lengths=lens[b:b + 1])
            assert np.array_equal(c["x_re"][j], tr[L - 1]) and np.array_equal(c["x_im"][j], ti[L - 1])
    return lg


@pytest.mark.skipif(__import__("shutil").which("gcc") is None, reason="gcc not on PATH")
@pytest.mark.parametrize("ds_path,cfg_name", [(BM, "hetero-3b-x10"), (JV, "hetero-3b-x10"), (JV, "paper-hetero")])
def test_c_equals_simulator_on_real_sequences(ds_path, cfg_name):
    """A small float model trained one epoch on the real data, quantized with its input quantizer:
    the C export (compiled with -Werror) equals the simulator on every test sequence."""
    from intssm.datapath.qspec import PRESETS
    from intssm.training.train import TrainArgs, train

    info = data.info(str(ds_path))
    cfg = ModelConfig(d_input=info.d_input, d_output=info.n_classes, d_model=8, d_state=16,
                      pool="last" if info.varlen else "mean")
    m = S4DModel(cfg, seed=0)
    best, _, _ = train(m, str(ds_path), TrainArgs(epochs=1, batch_size=16, val_fraction=0.0))
    m.load_state_dict(best)
    qm, _ = ptq_dataset(m.double(), PRESETS[cfg_name], data.load(str(ds_path), "train"))
    te = data.load(str(ds_path), "test")
    P = qm.input_codes(te.x, te.lengths)
    with tempfile.TemporaryDirectory() as t:
        _c_equals_simulator(qm, P, te.lengths, Path(t))


@pytest.mark.skipif(__import__("shutil").which("gcc") is None, reason="gcc not on PATH")
@settings(max_examples=6)
@given(models(max_layers=2), quant_configs(), st.data())
def test_c_equals_simulator_random_multichannel_varlen(m, qcfg, draw):
    """Random models with d_in in 1..16, float or uint8 inputs and unequal lengths: C == simulator."""
    d_in = draw.draw(st.integers(1, 16))
    cfg = ModelConfig(**{**m.cfg.to_dict(), "d_input": d_in, "pool": "last"})
    m = S4DModel(cfg, seed=draw.draw(st.integers(0, 99))).double()
    rng = np.random.default_rng(draw.draw(st.integers(0, 2**16)))
    B, L = draw.draw(st.integers(1, 6)), draw.draw(st.integers(1, 8))
    lens = rng.integers(1, L + 1, B)
    x = rng.normal(size=(B, L, d_in)).astype(np.float32) if draw.draw(st.booleans()) \
        else rng.integers(0, 256, (B, L, d_in)).astype(np.uint8)
    try:
        qm, _ = ptq_dataset(m, qcfg, data.SeqData(x, np.zeros(B, np.int64), "h", "", lens))
    except IntssmError as e:
        assert "2**53" in str(e) or "shifts <= 32" in str(e)
        assume(False)
    with tempfile.TemporaryDirectory() as t:
        _c_equals_simulator(qm, qm.input_codes(x, lens), lens, Path(t))


@pytest.mark.skipif(__import__("shutil").which("gcc") is None, reason="gcc not on PATH")
@pytest.mark.parametrize("name,ds_path,floor", [("basicmotions-hetero", BM, 1.0), ("japanesevowels-hetero", JV, 0.97)])
def test_shipped_uea_models(name, ds_path, floor):
    """The shipped integer models (tools/uea_models.sh): accuracy on the whole test set, Torch ==
    simulator on every sequence, and the C export (-Werror) == simulator on every sequence."""
    from intssm import sources as integer

    im = integer.load(ROOT / "data" / "checkpoints" / f"{name}.pt")
    te = data.load(str(ds_path), "test")
    P = im.input_codes(te)
    lg, _, _ = integer.run(im.model, P, lengths=te.lengths)
    assert (lg.argmax(1) == te.y).mean() >= floor
    assert np.array_equal(integer.torch_logits(im.qm, P, lengths=te.lengths), lg)
    with tempfile.TemporaryDirectory() as t:
        assert np.array_equal(_c_equals_simulator(im.qm, P, te.lengths, Path(t)), lg)


def test_ctrl_c_exits_130(tmp_path):
    """SIGINT during training ends with exit status 130 and says so (not 0 and silence, and not
    death by SIGINT at shutdown), at several moments of the run."""
    import signal
    import time

    for delay in (0.0, 0.5, 1.0):
        p = subprocess.Popen([sys.executable, "-m", "intssm", "train", "--seq", str(JV), "--preset", "tiny",
                              "--epochs", "100000", "-o", str(tmp_path / "m.pt")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        line = ""
        while "training" not in line and time.time() - t0 < 120:
            line = p.stderr.readline()
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 130, (delay, err[-500:])
        assert "interrupted" in err or "aborted" in err
