"""intssm.training.model (conv vs recurrent, ZOH discretization), training smoke test, checkpoints."""

from __future__ import annotations

import math
import os
import pickle

# Tiny 3x3 expm calls are ~100x slower with a multi-threaded OpenBLAS on a busy 2-core machine;
# scipy loads its own OpenBLAS on first import of scipy.linalg, which reads this variable.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from intssm import data  # noqa: E402
from intssm.training import checkpoint
from intssm.errors import IntssmError  # noqa: E402
from intssm.training.model import PRESETS, S4D, ModelConfig, S4DModel, n_params  # noqa: E402
from intssm.training.train import TrainArgs, evaluate, train  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small per-step ops: one thread is faster and immune to a busy machine; restores the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / max(1e-12, b.abs().max().item())


def perturb_s4d(s: S4D, g: torch.Generator, scale: float = 0.5):
    """Move the SSM parameters away from their structured init (random B, A, dt)."""
    with torch.no_grad():
        s.B.copy_(torch.randn(s.B.shape, generator=g, dtype=s.B.dtype))
        s.log_A_re.add_(scale * torch.randn(s.log_A_re.shape, generator=g, dtype=s.log_A_re.dtype))
        s.A_im.add_(scale * torch.randn(s.A_im.shape, generator=g, dtype=s.A_im.dtype))
        s.log_dt.add_(scale * torch.randn(s.log_dt.shape, generator=g, dtype=s.log_dt.dtype))


def perturb_ssm(model: S4DModel, g: torch.Generator, scale: float = 0.5):
    for layer in model.layers:
        perturb_s4d(layer.ssm, g, scale)


@st.composite
def configs(draw):
    dt_min = draw(st.floats(1e-3, 0.5))
    return dict(
        cfg=ModelConfig(
            d_input=draw(st.integers(1, 3)),
            d_output=draw(st.integers(2, 10)),
            d_model=draw(st.integers(1, 6)),
            d_state=2 * draw(st.integers(1, 4)),
            n_layers=draw(st.integers(1, 3)),
            pool=draw(st.sampled_from(["mean", "last"])),
            dt_min=dt_min,
            dt_max=dt_min * draw(st.floats(1.0, 100.0)),
        ),
        L=draw(st.integers(1, 40)),
        batch=draw(st.integers(1, 3)),
        seed=draw(st.integers(0, 2**31 - 1)),
        perturb=draw(st.booleans()),
    )


# --------------------------------------------------------------------------- (a) conv == recurrent


@given(configs())
def test_conv_equals_recurrent_float64(c):
    """On every drawn config (pooling, sizes, perturbed or init SSM), the float64 FFT-convolution logits equal
    the recurrent ones to relative error <= 1e-9, with float64 dtype, shape (batch, d_output) and finite values."""
    cfg, L, seed = c["cfg"], c["L"], c["seed"]
    model = S4DModel(cfg, seed=seed % 1000).double().eval()
    g = torch.Generator().manual_seed(seed)
    if c["perturb"]:
        perturb_ssm(model, g)
    u = torch.rand(c["batch"], L, cfg.d_input, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y_conv = model(u)
        y_rec = model(u, mode="recurrent")
    assert y_conv.dtype == torch.float64 and y_rec.dtype == torch.float64
    assert y_conv.shape == y_rec.shape == (c["batch"], cfg.d_output)
    assert torch.isfinite(y_conv).all()
    err = rel_err(y_rec, y_conv)
    assert err <= 1e-4, (err, cfg, L)
    # In float64 both paths are exact up to rounding (observed <= 1e-14); the tighter bound also
    # catches a silent float32 step in either path, which the 1e-4 bound would let through.
    assert err <= 1e-9, (err, cfg, L)


def test_conv_equals_recurrent_paper_small_full_length_float32():
    """Same check at the real length (784) and precision (float32): looser tolerance."""
    model = S4DModel(PRESETS["paper-small"], seed=1).eval()
    u = torch.from_numpy(data.load("smnist", "test", limit=3).as_float())
    with torch.no_grad():
        y_conv = model(u)
        y_rec = model(u, mode="recurrent")
    assert rel_err(y_rec, y_conv) <= 1e-4


def test_ssm_layer_conv_equals_step_by_step():
    """One S4D layer on its own: the FFT convolution equals the recurrence x_k = Abar x + Bbar u."""
    torch.manual_seed(0)
    ssm = S4D(3, 8, seed_gen=torch.Generator().manual_seed(5)).double()
    perturb_s4d(ssm, torch.Generator().manual_seed(6))
    u = torch.randn(2, 3, 50, dtype=torch.float64)
    with torch.no_grad():
        y_conv = ssm(u)
        Abar, Bbar, C, D = (t.detach() for t in ssm.discrete())
        x = torch.zeros(2, 3, 4, dtype=torch.complex128)
        ys = []
        for k in range(50):
            x = Abar * x + Bbar * u[:, :, k, None]
            ys.append(2 * (C * x).sum(-1).real + D * u[:, :, k])
    y_rec = torch.stack(ys, -1)
    assert rel_err(y_rec, y_conv) <= 1e-10


# --------------------------------------------------------------------------- (b) ZOH vs expm


@given(seed=st.integers(0, 2**31 - 1), log_dt_shift=st.floats(-3.0, 2.0))
def test_discretization_matches_matrix_exponential(seed, log_dt_shift):
    """ZOH discretization vs scipy: Abar equals expm(dt A) (as a 2x2 real block, rtol 1e-9) and Bbar equals the
    input integral read off the augmented 3x3 expm (rtol 1e-8), for drawn A, B and dt; both are complex128."""
    g = torch.Generator().manual_seed(seed)
    ssm = S4D(3, 8, seed_gen=g).double()
    with torch.no_grad():
        ssm.log_dt.add_(log_dt_shift)
        ssm.log_A_re.copy_(torch.randn(ssm.log_A_re.shape, generator=g, dtype=torch.float64))
        ssm.A_im.copy_(10 * torch.randn(ssm.A_im.shape, generator=g, dtype=torch.float64))
        ssm.B.copy_(torch.randn(ssm.B.shape, generator=g, dtype=torch.float64))
        Abar, Bbar, _, _ = ssm.discrete()
        dt = torch.exp(ssm.log_dt).numpy()
        a = torch.complex(-torch.exp(ssm.log_A_re), ssm.A_im).numpy()
        b = ssm.B.numpy()
    assert Abar.dtype == torch.complex128 and Bbar.dtype == torch.complex128
    H, N2 = a.shape
    for h in range(H):
        for n in range(N2):
            ar, ai = a[h, n].real, a[h, n].imag
            M = np.array([[ar, -ai], [ai, ar]])
            E = scipy.linalg.expm(dt[h] * M)
            want_A = np.array([[Abar[h, n].real, -Abar[h, n].imag], [Abar[h, n].imag, Abar[h, n].real]])
            np.testing.assert_allclose(want_A, E, rtol=1e-9, atol=1e-12)
            # ZOH input: x(dt) = e^{dt M} x0 + (int_0^dt e^{sM} ds) b u; read off the augmented expm
            aug = np.zeros((3, 3))
            aug[:2, :2] = M
            aug[:2, 2] = b[h, n]
            zoh = scipy.linalg.expm(dt[h] * aug)[:2, 2]
            np.testing.assert_allclose([Bbar[h, n].real, Bbar[h, n].imag], zoh, rtol=1e-8,
                                       atol=1e-12 * max(1.0, np.abs(zoh).max()))


def test_s4d_lin_init():
    """The S4D-Lin init: A = -1/2 + i pi n (n = 0..N/2-1) in every head, and every dt lies in [1e-3, 1e-1]."""
    ssm = S4D(2, 8)
    dt, A = ssm.continuous()
    np.testing.assert_allclose(A.real.detach().numpy(), -0.5)
    np.testing.assert_allclose(A.imag.detach().numpy(), np.pi * np.arange(4)[None].repeat(2, 0), rtol=1e-6)
    assert ((dt >= 1e-3 - 1e-9) & (dt <= 1e-1 + 1e-9)).all()


# --------------------------------------------------------------------------- (c) presets


def test_paper_small_parameter_count():
    """The paper-small preset (H=16, N=64) has exactly 3,850 parameters, the per-part count written out
    (encoder, SSM, GLU, decoder), and lies in 3,800..4,000."""
    n = n_params(S4DModel(PRESETS["paper-small"]))
    assert 3800 <= n <= 4000, n
    # H=16, N=64: encoder 32, SSM 16*(1+32+32+64+64)+16, GLU 16*32+32, decoder 16*10+10
    assert n == 32 + 16 * (1 + 32 + 32 + 64 + 64) + 16 + 16 * 32 + 32 + 170


def test_presets_valid_and_config_errors():
    """Every model preset validates; nine bad settings (odd d_state, d_model 0, unknown pool or key, dt_min >
    dt_max, min_decay outside [0, 1) or not a number) each raise IntssmError naming the model config."""
    for cfg in PRESETS.values():
        assert cfg.validate() is cfg
    for bad in (dict(d_state=7), dict(d_model=0), dict(pool="max"), dict(dt_min=0.2, dt_max=0.1), dict(nope=1),
                dict(min_decay=-0.1), dict(min_decay=1.0), dict(min_decay=True), dict(min_decay="x")):
        with pytest.raises(IntssmError, match="model config"):
            ModelConfig.from_dict(bad)


# --------------------------------------------------------------------------- (d) training lowers the loss


@pytest.fixture
def restore_torch_globals():
    det = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(det)


def test_short_training_lowers_the_loss(restore_torch_globals):
    """Three epochs of the tiny preset on 512 sMNIST sequences: the history has epochs 1..3, train loss falls,
    validation loss falls by > 0.01, SSM and decoder weights all move, and the returned best state
    reproduces the best epoch's validation accuracy."""
    model = S4DModel(PRESETS["tiny"], seed=0)
    va = data.load("smnist", "val", limit=512)
    acc0, loss0 = evaluate(model, va.as_float(), va.y)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    best, history, _ = train(model, "smnist", TrainArgs(epochs=3, limit=512, batch_size=64, threads=1))
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    _, loss1 = evaluate(model, va.as_float(), va.y)
    assert loss1 < loss0 - 0.01, (loss0, loss1)
    # every parameter group moved, the SSM ones (lower lr) included
    for k in ("layers.0.ssm.log_dt", "layers.0.ssm.B", "layers.0.ssm.C", "decoder.weight"):
        assert not torch.equal(before[k], model.state_dict()[k]), k
    # "best" is the state of the epoch with the best validation accuracy
    assert set(best) == set(before)
    best_epoch = max(history, key=lambda r: r["val_acc"])
    m2 = S4DModel(PRESETS["tiny"])
    m2.load_state_dict(best)
    assert evaluate(m2, va.as_float(), va.y)[0] == pytest.approx(best_epoch["val_acc"])


# --------------------------------------------------------------------------- (e) checkpoints


@pytest.fixture
def trained_like_model():
    model = S4DModel(ModelConfig(d_model=5, d_state=6, n_layers=2, pool="last"), seed=3)
    perturb_ssm(model, torch.Generator().manual_seed(4))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def test_checkpoint_round_trip_is_exact(tmp_path, trained_like_model):
    """save then load gives an eval-mode model with the same config, the same state-dict keys, dtypes and
    values (torch.equal), identical conv and recurrent outputs, and the stored format, metrics and dataset."""
    model = trained_like_model
    p = tmp_path / "sub" / "m.pt"
    checkpoint.save(p, model, metrics=[{"epoch": 1, "val_acc": 0.5}], dataset={"seq": "smnist", "checksum": "abc"})
    loaded, ck = checkpoint.load(p)
    assert not loaded.training
    assert loaded.cfg == model.cfg
    sd0, sd1 = model.state_dict(), loaded.state_dict()
    assert list(sd0) == list(sd1)
    for k in sd0:
        assert sd0[k].dtype == sd1[k].dtype and torch.equal(sd0[k], sd1[k]), k
    u = torch.rand(4, 30, 1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(u), loaded(u))
        assert torch.equal(model(u, mode="recurrent"), loaded(u, mode="recurrent"))
    assert ck["format"] == "intssm-ckpt"
    assert ck["metrics"] == [{"epoch": 1, "val_acc": 0.5}]
    assert ck["dataset"]["checksum"] == "abc"


def _edit_checkpoint(tmp_path, model, edit):
    p = tmp_path / "edited.pt"
    checkpoint.save(p, model)
    ck = torch.load(p, weights_only=True)
    edit(ck)
    torch.save(ck, p)
    return p


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_checkpoint_non_finite_weight(tmp_path, trained_like_model, bad):
    """A NaN, inf or -inf in one weight is refused with an IntssmError naming that weight."""

    def edit(ck):
        ck["state_dict"]["layers.1.ssm.C"][0, 0, 1] = bad

    p = _edit_checkpoint(tmp_path, trained_like_model, edit)
    with pytest.raises(IntssmError, match="weight 'layers.1.ssm.C' contains NaN or inf"):
        checkpoint.load(p)


def test_checkpoint_wrong_shape(tmp_path, trained_like_model):
    """A weight of the wrong shape is refused with a one-line IntssmError naming the size mismatch and the weight."""

    def edit(ck):
        ck["state_dict"]["decoder.weight"] = torch.zeros(10, 4)

    p = _edit_checkpoint(tmp_path, trained_like_model, edit)
    with pytest.raises(IntssmError, match=r"weights do not fit the model config \(size mismatch for decoder.weight") as e:
        checkpoint.load(p)
    assert "\n" not in str(e.value)


def test_checkpoint_config_disagrees_with_weights(tmp_path, trained_like_model):
    """A stored model_config whose d_state disagrees with the weights is refused (weights do not fit the config)."""

    def edit(ck):
        ck["model_config"]["d_state"] = 8

    with pytest.raises(IntssmError, match="weights do not fit the model config"):
        checkpoint.load(_edit_checkpoint(tmp_path, trained_like_model, edit))


def test_checkpoint_missing_weight(tmp_path, trained_like_model):
    """A state_dict without one weight (encoder.bias) is refused with an IntssmError naming the missing key."""

    def edit(ck):
        del ck["state_dict"]["encoder.bias"]

    with pytest.raises(IntssmError, match="Missing key.*encoder.bias"):
        checkpoint.load(_edit_checkpoint(tmp_path, trained_like_model, edit))


@pytest.mark.parametrize(
    "content,fragment",
    [
        (np.random.default_rng(0).bytes(500), "not a readable intssm checkpoint"),
        (b"", "not a readable intssm checkpoint"),
        (b"PK\x03\x04 truncated zip", "not a readable intssm checkpoint"),
        (pickle.dumps({"format": "intssm-ckpt"}, protocol=2), "not a readable intssm checkpoint"),
    ],
)
def test_checkpoint_not_a_checkpoint(tmp_path, content, fragment):
    """Random bytes, an empty file, a truncated zip and a plain pickle are each refused with a one-line
    "not a readable intssm checkpoint" IntssmError."""
    p = tmp_path / "junk.pt"
    p.write_bytes(content)
    with pytest.raises(IntssmError, match=fragment) as e:
        checkpoint.load(p)
    assert "\n" not in str(e.value)


def test_checkpoint_other_torch_file_and_missing(tmp_path):
    """A torch file without the intssm format entry, one without model_config, and a missing path are each
    refused with their own IntssmError message."""
    p = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, p)
    with pytest.raises(IntssmError, match="not an intssm checkpoint"):
        checkpoint.load(p)
    torch.save({"format": "intssm-ckpt", "state_dict": {}}, p)
    with pytest.raises(IntssmError, match="lacks 'model_config'"):
        checkpoint.load(p)
    with pytest.raises(IntssmError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "missing.pt")


def test_checkpoint_text_file(tmp_path):
    """A text file is refused with "not a readable intssm checkpoint"."""
    p = tmp_path / "notes.pt"
    p.write_text("hello world\n")
    with pytest.raises(IntssmError, match="not a readable intssm checkpoint"):
        checkpoint.load(p)


@pytest.mark.parametrize("key,value", [("state_dict", [1, 2]), ("model_config", 5)])
def test_checkpoint_wrong_types(tmp_path, trained_like_model, key, value):
    """A state_dict that is a list or a model_config that is an int is refused with IntssmError (type only;
    the message is not checked)."""

    def edit(ck):
        ck[key] = value

    with pytest.raises(IntssmError):
        checkpoint.load(_edit_checkpoint(tmp_path, trained_like_model, edit))


def test_min_decay_holds_at_init_and_after_training(restore_torch_globals):
    """With min_decay = g every mode keeps 1 - |Abar| >= g: at init and after optimizer steps that
    would otherwise slow modes down; the constraint is active (some modes sit on it) and g = 0 is a no-op."""
    from dataclasses import replace

    g = 1 / 16

    def gap(m):
        s = m.layers[0].ssm
        return 1 - torch.exp(-s.log_A_re.exp() * s.log_dt.exp()[:, None])

    free = S4DModel(PRESETS["tiny"], seed=0)
    assert gap(free).min() < g  # the default init has slower modes than that
    model = S4DModel(replace(PRESETS["tiny"], min_decay=g), seed=0)
    assert gap(model).min() >= g * (1 - 1e-6)
    assert torch.equal(free.layers[0].ssm.log_dt, model.layers[0].ssm.log_dt)
    train(model, "smnist", TrainArgs(epochs=1, limit=256, batch_size=64, threads=1, ssm_lr=0.05))
    d = gap(model)
    assert d.min() >= g * (1 - 1e-6)
    assert (d < g * 1.001).any()  # some modes sit on the bound


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    """A save that fails halfway leaves the previous checkpoint intact and no temporary file."""
    path = tmp_path / "m.pt"
    m = S4DModel(PRESETS["tiny"], seed=0)
    checkpoint.save(path, m)
    before = path.read_bytes()

    def half_write(obj, f):
        open(f, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, S4DModel(PRESETS["tiny"], seed=1))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    monkeypatch.undo()
    checkpoint.load(path)  # still a valid checkpoint


def test_float64_checkpoint_loads_and_evaluates_at_float64(tmp_path):
    """QAT checkpoints hold float64 weights: they load at float64, bit for bit, and `evaluate`
    feeds them float64 inputs (a float32 batch against float64 weights would raise)."""
    m = S4DModel(PRESETS["tiny"], seed=0).double()
    checkpoint.save(tmp_path / "d.pt", m)
    loaded, _ = checkpoint.load(tmp_path / "d.pt")
    assert all(torch.equal(a, b) and a.dtype == torch.float64 for a, b in zip(m.state_dict().values(), loaded.state_dict().values()))
    ds = data.load("smnist", "test", 8)
    acc64, _ = evaluate(loaded, ds.as_float(), ds.y)
    acc32, _ = evaluate(loaded.float(), ds.as_float(), ds.y)
    assert acc64 == acc32
