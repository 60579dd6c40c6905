"""Quantization-aware training: parameterisations, loss goes down, result stays bit-exact."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from intssm import data
from intssm.training import checkpoint
from intssm.errors import IntssmError
from intssm.integer.export import from_quantized, integer_model
from intssm.training.model import ModelConfig, S4DModel
from intssm.integer.score import int_accuracy
from intssm.training.qat import QATArgs, configure
from intssm.training.ptq import from_checkpoint, ptq, qspec_entry
from intssm.datapath.qspec import PRESETS
from intssm.integer.sim import simulate


def _qm(config="paper-hetero", seed=0):
    m = S4DModel(ModelConfig(d_model=4, d_state=8, n_layers=1), seed=seed).double()
    cal = data.load("smnist", "train", 8)
    qm, ranges = ptq(m, PRESETS[config], torch.from_numpy(cal.as_float()))
    return qm, ranges


@pytest.mark.parametrize("param", ["continuous", "frozen", "discrete"])
def test_parameterisations_train_the_intended_parameters(param):
    """One QAT step changes exactly the parameters the parameterisation trains."""
    qm, _ = _qm()
    params = configure(qm, param)
    before = {n: p.detach().clone() for n, p in qm.model.named_parameters()}
    disc_before = {k: v.detach().clone() for k, v in qm.discrete.items()} if qm.discrete is not None else {}
    opt = torch.optim.SGD(params, lr=1e-2)
    x = data.load("smnist", "train", 16)
    lg, _ = qm(torch.from_numpy(x.x), ste=True)
    F.cross_entropy(qm.real_logits(lg), torch.from_numpy(x.y)).backward()
    opt.step()
    changed = {n for n, p in qm.model.named_parameters() if not torch.equal(p, before[n])}
    ssm_cont = {"layers.0.ssm.log_dt", "layers.0.ssm.log_A_re", "layers.0.ssm.A_im"}
    if param == "continuous":
        assert ssm_cont <= changed and "layers.0.ssm.B" in changed
    elif param == "frozen":
        assert not (ssm_cont & changed) and "layers.0.ssm.B" in changed and "layers.0.ssm.C" in changed
    else:
        assert not ((ssm_cont | {"layers.0.ssm.B"}) & changed) and "layers.0.ssm.C" in changed
        assert any(not torch.equal(qm.discrete[k], disc_before[k]) for k in disc_before)
    assert "decoder.weight" in changed


def test_unknown_param_refused():
    """configure refuses an unknown parameterisation ('polar') with IntssmError."""
    qm, _ = _qm()
    with pytest.raises(IntssmError):
        configure(qm, "polar")


def test_short_qat_lowers_loss_and_stays_bit_exact(tmp_path):
    """A few QAT steps on one batch lower its loss; the saved checkpoint simulates bit-exactly and
    holds exactly the integer model that was trained (float64 weights: no code flips on reload)."""
    qm, ranges = _qm(seed=1)
    params = configure(qm, "discrete")
    opt = torch.optim.Adam(params, lr=3e-3)
    x = data.load("smnist", "train", 32)
    P, y = torch.from_numpy(x.x), torch.from_numpy(x.y)
    losses = []
    for _ in range(8):
        lg, _ = qm(P, ste=True)
        loss = F.cross_entropy(qm.real_logits(lg), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    path = tmp_path / "q.pt"
    checkpoint.save(path, qm.model, qspec=qspec_entry(qm, ranges))
    model, ck = checkpoint.load(path)
    assert next(model.parameters()).dtype == torch.float64
    qm2 = from_checkpoint(model, ck)
    te = data.load("smnist", "test", 6)
    with torch.no_grad():
        lt, _ = qm2(torch.from_numpy(te.x))
    ls, _, _ = simulate(from_quantized(qm2), te.x)
    assert (lt.numpy().astype(np.int64) == ls).all()
    before, after = integer_model(qm), integer_model(qm2)
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_time_budget_stops_qat_after_a_partial_epoch():
    """max_minutes ends training at the first step past the budget; that partial epoch is validated."""
    from intssm.training.qat import train

    qm, _ = _qm()
    best, hist, _ = train(qm, "smnist", QATArgs(epochs=3, batch_size=8, limit=64, val_limit=16, max_minutes=1e-6), int_accuracy)
    assert len(hist) == 2  # epoch 0 (before training) and the stopped epoch
    assert "time budget" in hist[1]["stopped"]
    assert 0.0 <= hist[1]["val_int_acc"] <= 1.0


def test_distill_loss_is_zero_only_at_the_teacher():
    """The distillation term vanishes when the student's logits equal the teacher's and is positive
    otherwise; at temperature T it is T**2 times the KL of the softened distributions."""
    from intssm.training.qat import distill_loss

    t = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], dtype=torch.float64)
    assert distill_loss(t.clone(), t, 2.0).item() == pytest.approx(0.0, abs=1e-15)
    s = t.flip(1)
    p, q = F.softmax(t / 3.0, -1), F.softmax(s / 3.0, -1)
    expect = 9.0 * (p * (p.log() - q.log())).sum(-1).mean().item()
    assert distill_loss(s, t, 3.0).item() == pytest.approx(expect, rel=1e-12)
    assert expect > 0


def test_distillation_steps_move_the_student_toward_the_teacher():
    """QAT with alpha = 1 (distillation only) lowers the KL to the float teacher on the batch it trains on."""
    from intssm.training.qat import distill_loss, qat_step

    qm, _ = _qm(seed=2)
    teacher = S4DModel(ModelConfig(d_model=4, d_state=8, n_layers=1), seed=3).eval()
    params = configure(qm, "discrete")
    opt = torch.optim.Adam(params, lr=3e-3)
    x = data.load("smnist", "train", 32)

    def kl():
        with torch.no_grad():
            lg, _ = qm(torch.from_numpy(x.x))
            return distill_loss(qm.real_logits(lg), teacher(torch.from_numpy(x.as_float())).double(), 2.0).item()

    before = kl()
    for _ in range(8):
        qat_step(qm, opt, params, x.x, x.y, teacher, 1.0, 2.0)
    assert kl() < before


def test_distillation_settings_are_checked():
    """distill outside [0, 1] or a temperature of 0 is refused with IntssmError (type only), and a teacher
    with a different number of outputs is refused with a message naming the teacher."""
    from intssm.training.qat import train

    qm, _ = _qm()
    for bad in ({"distill": 1.5}, {"distill": -0.1}, {"distill": 0.5, "distill_temp": 0.0}):
        with pytest.raises(IntssmError):
            train(qm, "smnist", QATArgs(limit=8, val_limit=8, **bad), int_accuracy)
    other = S4DModel(ModelConfig(d_model=4, d_state=8, n_layers=1, d_output=3), seed=0)
    with pytest.raises(IntssmError, match="teacher"):
        train(qm, "smnist", QATArgs(limit=8, val_limit=8, distill=0.5), int_accuracy, teacher=other)


def test_stable_abar_moves_every_mode_inside_the_unit_circle():
    """With stable_abar, every quantized |Abar| < 1, modes that were already inside keep their codes,
    the others move by the fewest steps toward zero, gradients still reach Abar (STE), and the
    integer model simulates bit-exactly."""
    from dataclasses import replace

    m = S4DModel(ModelConfig(d_model=4, d_state=16, n_layers=1), seed=0).double()
    with torch.no_grad():  # slow, oscillating modes: rounding puts many of them on or outside |z| = 1
        m.layers[0].ssm.log_A_re.fill_(-7.0)
        m.layers[0].ssm.log_dt.fill_(-2.0)
    cal = torch.from_numpy(data.load("smnist", "train", 4).as_float())
    q = replace(PRESETS["paper-hetero"].with_bits(A_re=5, A_im=5), stable_abar=False)
    plain, _ = ptq(m, q, cal)
    stable, _ = ptq(m, replace(q, stable_abar=True), cal)

    def mag(qm):
        W, c, tq = qm.weight_codes(), qm.c, qm.dp.tq
        vr = (W["A_re"][0] - c["A_re_z"][0][:, None]) * torch.as_tensor(tq["l0.A_re"].scale)[:, None]
        vi = (W["A_im"][0] - c["A_im_z"][0][:, None]) * torch.as_tensor(tq["l0.A_im"].scale)[:, None]
        return W, (vr**2 + vi**2)

    Wp, mp = mag(plain)
    Ws, ms = mag(stable)
    assert (mp >= 1).any()  # the case is real
    assert (ms < 1).all()
    inside = mp < 1
    assert torch.equal(Wp["A_re"][0][inside], Ws["A_re"][0][inside]) and torch.equal(Wp["A_im"][0][inside], Ws["A_im"][0][inside])
    moved = (Wp["A_re"][0] - Ws["A_re"][0]).abs() + (Wp["A_im"][0] - Ws["A_im"][0]).abs()
    assert moved[~inside].min() >= 1 and moved[~inside].max() <= 3
    params = configure(stable, "discrete")
    x = data.load("smnist", "train", 4)
    lg, _ = stable(torch.from_numpy(x.x), ste=True)
    F.cross_entropy(stable.real_logits(lg), torch.from_numpy(x.y)).backward()
    assert stable.discrete["A_re_0"].grad is not None and stable.discrete["A_re_0"].grad.abs().sum() > 0
    assert len(params) > 0
    with torch.no_grad():
        lt, _ = stable(torch.from_numpy(x.x))
    ls, _, _ = simulate(from_quantized(stable), x.x)
    assert (lt.numpy().astype(np.int64) == ls).all()


def test_weight_ema_averages_and_swaps_back():
    """WeightEMA follows a <- d a + (1 - d) w; inside swapped_in() the model holds the average and
    afterwards exactly its live weights again."""
    from intssm.training.qat import WeightEMA

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    avg = WeightEMA([w], 0.75)
    with torch.no_grad():
        w.copy_(torch.tensor([5.0, 2.0], dtype=torch.float64))
    avg.update()  # 0.75 * [1, -2] + 0.25 * [5, 2] = [2, -1]
    with avg.swapped_in():
        assert w.tolist() == [2.0, -1.0]
    assert w.tolist() == [5.0, 2.0]


def test_ema_qat_scores_both_and_keeps_the_reported_snapshot():
    """With ema > 0 every epoch is scored with live and averaged weights; the snapshot train()
    returns is the one kept() reports, and restoring it reproduces that validation accuracy."""
    from intssm.training.qat import kept, restore, train

    qm, _ = _qm(seed=2)
    best, hist, _ = train(qm, "smnist", QATArgs("discrete", epochs=2, batch_size=8, limit=48, val_limit=64, lr=3e-3, ema=0.9),
                          int_accuracy)
    assert all("val_int_acc_ema" in r for r in hist[1:])
    acc, ep, key = kept(hist)
    restore(qm, best)
    va = data.load("smnist", "val", 64)
    assert int_accuracy(qm, va.x, va.y) == acc
    with pytest.raises(IntssmError):
        train(qm, "smnist", QATArgs(limit=8, val_limit=8, ema=1.0), int_accuracy)


def test_small_data_rule_keeps_smnist_and_gives_small_sets_a_step_budget():
    """plan() leaves a 50,000-sequence split (sMNIST's) at one epoch of batch 64 without warm-up, the
    defaults QAT always had; a small split gets batch n/16 (at least 8) and the fewest epochs giving
    >= MIN_STEPS optimizer steps with a 5% warm-up; options given stay as given (no warm-up when
    --epochs is)."""
    from intssm.training.qat import MIN_STEPS, plan

    big = plan(QATArgs(), 50000)
    assert (big.epochs, big.batch_size, big.warmup) == (1, 64, 0.0)
    small = plan(QATArgs(), 36)
    assert small.batch_size == 8 and small.warmup == 0.05
    per_epoch = -(-36 // 8)
    assert small.epochs * per_epoch >= MIN_STEPS > (small.epochs - 1) * per_epoch
    mid = plan(QATArgs(), 1000)  # batch 62: 17 steps per epoch
    assert mid.batch_size == 62 and mid.epochs == 18
    given = plan(QATArgs(epochs=3, batch_size=16), 36)
    assert (given.epochs, given.batch_size, given.warmup) == (3, 16, 0.0)
    assert plan(QATArgs(batch_size=4), 36).epochs == -(-MIN_STEPS // 9)
    assert plan(QATArgs(warmup=0.2), 50000).warmup == 0.2
    with pytest.raises(IntssmError, match="--warmup"):
        QATArgs(warmup=1.0).check()


def test_qat_run_follows_the_small_data_rule(tmp_path):
    """qat.run with default options on a 30-sequence dataset trains plan()'s epochs at its batch,
    records them (with the warm-up) in the checkpoint, and the checkpoint simulates to the integer
    accuracy on the training sequences that the last epoch reported."""
    from intssm.training.qat import MIN_STEPS, run

    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    x = (rng.normal(0, 0.3, (40, 12, 1)) + (2 * y - 1)[:, None, None] * np.linspace(0, 1, 12)[None, :, None]).astype(np.float32)
    d = tmp_path / "d.npz"
    np.savez(d, x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])
    f = tmp_path / "f.pt"
    checkpoint.save(f, S4DModel(ModelConfig(d_output=2, d_model=4, d_state=8), seed=0),
                    dataset={"seq": str(d), "checksum": data.load(str(d)).checksum, "val_fraction": 0.0})
    r = run(f, tmp_path / "q.pt", QATArgs(), int_accuracy, progress=False)
    a = r["args"]
    assert (a.batch_size, a.warmup) == (8, 0.05) and a.epochs == -(-MIN_STEPS // 4)
    assert [h["epoch"] for h in r["history"]] == list(range(a.epochs + 1))
    model, ck = checkpoint.load(tmp_path / "q.pt")
    assert {k: ck["qat"][k] for k in ("epochs", "batch_size", "warmup")} == {"epochs": a.epochs, "batch_size": 8, "warmup": 0.05}
    qm = from_checkpoint(model, ck)
    tr = data.load(str(d), "train", None, 0.0)
    assert int_accuracy(qm, qm.input_codes(tr.x, tr.lengths), tr.y, tr.lengths) == r["history"][-1]["train_int_acc"]
