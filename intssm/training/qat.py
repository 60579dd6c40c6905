"""Quantization-aware training through the quantized recurrence (straight-through estimators).

The datapath (scales, multipliers, LUTs) is fixed by calibration; QAT moves the float weights
under their quantizers. Three parameterisations of Abar (the paper's):

  continuous  A and dt are trained; Abar = exp(dt A) is recomputed and quantized every step
  frozen      A and dt are frozen (Abar fixed from the float model); B, C, D and the rest train
  discrete    Abar and Bbar are parameters themselves, initialised from the float model

Model selection uses the integer simulator's accuracy on validation sequences.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from intssm import data
from intssm.datapath.inputq import model_input
from intssm.errors import IntssmError
from intssm.integer.export import from_quantized
from intssm.training.qmodel import QuantS4D
from intssm.integer.sim import simulate

PARAMS = ("continuous", "frozen", "discrete")
GRAD_CLIP = 1.0  # global gradient-norm clip: straight-through gradients through 784 steps can spike
SSM_CONTINUOUS = ("log_dt", "log_A_re", "A_im")


def configure(qm: QuantS4D, param: str) -> list:
    """Set requires_grad for the parameterisation; returns the trainable parameters."""
    if param not in PARAMS:
        raise IntssmError(f"--param must be one of {', '.join(PARAMS)}, got {param!r}")
    if param == "discrete" and qm.discrete is None:
        qm.make_discrete()
    for name, p in qm.model.named_parameters():
        leaf = name.split(".")[-1]
        if param == "continuous":
            p.requires_grad_(True)
        elif param == "frozen":
            p.requires_grad_(leaf not in SSM_CONTINUOUS)
        else:
            p.requires_grad_(leaf not in SSM_CONTINUOUS + ("B",))
    params = [p for p in qm.model.parameters() if p.requires_grad]
    if qm.discrete is not None and param == "discrete":
        params += list(qm.discrete.parameters())
    return params


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temp: float) -> torch.Tensor:
    """Knowledge distillation (Hinton et al., 2015): T**2 KL(softmax(t / T) || softmax(s / T)),
    batch mean; the T**2 keeps its gradient on the scale of the cross-entropy's."""
    return F.kl_div(F.log_softmax(logits / temp, -1), F.log_softmax(teacher_logits.to(logits.dtype) / temp, -1),
                    reduction="batchmean", log_target=True) * temp**2


def qat_step(qm: QuantS4D, opt, params: list, P: np.ndarray, y: np.ndarray, teacher=None, distill: float = 0.0,
             temp: float = 2.0, lengths: np.ndarray | None = None) -> float:
    """One straight-through step on input codes ``P`` (B, L, d), labels ``y`` and sequence
    ``lengths`` (B,) (None: all L); returns the loss.

    With a ``teacher`` (a float :class:`~intssm.training.model.S4DModel` reading codes as ``P / 255``) and
    ``distill`` = alpha > 0 the loss is (1 - alpha) CE + alpha :func:`distill_loss` against its logits.
    """
    lens = None if lengths is None else torch.from_numpy(lengths)
    lg, _ = qm(torch.from_numpy(P), ste=True, lengths=lens)
    logits = qm.real_logits(lg)
    loss = F.cross_entropy(logits, torch.from_numpy(y))
    if teacher is not None and distill > 0:
        with torch.no_grad():
            t_logits = teacher(torch.from_numpy(model_input(P)), lengths=lens)
        loss = (1 - distill) * loss + distill * distill_loss(logits, t_logits, temp)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
    opt.step()
    qm.model.project()  # the float model's constraints (min_decay) hold for continuous A too
    return loss.item()


class WeightEMA:
    """Exponential moving average of parameters: a <- d a + (1 - d) w after each :meth:`update`."""

    def __init__(self, params: list, decay: float):
        self.params, self.decay = list(params), decay
        self.avg = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for a, p in zip(self.avg, self.params):
            a.lerp_(p.detach(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self):
        """The averaged weights in place of the live ones inside the ``with`` block."""
        live = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for a, p in zip(self.avg, self.params):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for w, p in zip(live, self.params):
                    p.copy_(w)


def restore(qm: QuantS4D, best) -> None:
    """Load a snapshot returned by :func:`train` into ``qm``."""
    qm.model.load_state_dict(best[0])
    if best[1] is not None:
        qm.discrete.load_state_dict(best[1])


def kept(history: list) -> tuple[float, int, str]:
    """(accuracy, epoch, key) of the snapshot :func:`train` keeps: the first strictly best score, an
    epoch's live weights (``val_int_acc``) scored before its averaged ones (``val_int_acc_ema``)."""
    if history[0]["val_int_acc"] is None:  # no validation split: the last epoch was kept
        return None, history[-1]["epoch"], "val_int_acc"
    best = (history[0]["val_int_acc"], 0, "val_int_acc")
    for r in history[1:]:
        for k in ("val_int_acc", "val_int_acc_ema"):
            if k in r and r[k] > best[0]:
                best = (r[k], r["epoch"], k)
    return best


def int_accuracy(qm: QuantS4D, x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None) -> float:
    """Integer-simulator accuracy on input codes ``x`` (n, L, d) of lengths ``lengths``."""
    lg, _, _ = simulate(from_quantized(qm), x, lengths=lengths)
    return float((lg.argmax(1) == y).mean())


def check_options(epochs: int = 1, batch_size: int = 1, lr: float = 1e-3, max_minutes: float = 0.0,
                  distill: float = 0.0, temp: float = 2.0, ema: float = 0.0) -> None:
    """Refuse QAT options outside their ranges (NaN and inf included), before any work; messages
    name the command-line options."""
    if not all(math.isfinite(v) for v in (lr, max_minutes, distill, temp, ema)):
        raise IntssmError("--lr, --max-minutes, --distill, --distill-temp and --ema must be finite numbers")
    if epochs < 1 or batch_size < 1 or lr <= 0 or max_minutes < 0:
        raise IntssmError("--epochs, --batch-size and --lr must be positive (--max-minutes >= 0)")
    if not 0 <= distill <= 1 or temp <= 0:
        raise IntssmError(f"--distill must be in [0, 1] and --distill-temp > 0, got {distill} and {temp}")
    if not 0 <= ema < 1:
        raise IntssmError(f"--ema must be in [0, 1) (0 = off), got {ema}")


@dataclass
class Start:
    """The quantized model QAT starts from, and where it came from."""

    qm: QuantS4D
    ranges: dict  # the calibrated ranges its datapath was built on
    how: str  # the config, as the checkpoint's qat entry records it
    ck: dict  # the checkpoint it was read from
    seq: str  # its dataset
    val_fraction: float | None


def start_from(ckpt, config: str | None = None, calib: int = 256, equalize: float = 0.0) -> Start:
    """A float checkpoint gets PTQ at ``config`` (default w8a8) on ``calib`` training sequences
    (states equalized first if ``equalize`` > 0); a quantized one is rebuilt, and re-quantized on its
    stored ranges if ``config`` is given (progressive quantization)."""
    from intssm.training import checkpoint
    from intssm.training.ptq import from_checkpoint, ptq_dataset, requantize_model
    from intssm.datapath.qspec import get_config
    from intssm.datapath.ranges import ranges_from_json

    model, ck = checkpoint.load(ckpt)
    model = model.double()
    seq = checkpoint.dataset_seq(ck)
    vfrac = checkpoint.val_fraction(ck)
    if "qspec" in ck:
        if equalize:
            raise IntssmError("--equalize applies to a float checkpoint, before calibration; this one is already quantized")
        qm = from_checkpoint(model, ck)
        ranges = ranges_from_json(ck["qspec"]["ranges"])
        if config is not None:
            qm = requantize_model(qm, get_config(config), ranges)
        how = "from checkpoint" if config is None else f"{config} (re-quantized on the checkpoint's ranges)"
    else:
        config = config or "w8a8"
        qm, ranges = ptq_dataset(model, get_config(config), data.load(seq, "train", calib, vfrac), equalize)
        how = config if not equalize else f"{config}, states equalized (alpha {equalize})"
    return Start(qm, ranges, how, ck, seq, vfrac)


def result_entries(start: Start, best, history: list, interrupted, **record) -> dict:
    """The checkpoint entries of a finished (or interrupted) QAT run: ``start.qm`` set to the kept
    snapshot ``best``, its qspec, and the ``qat`` record (``record`` plus history and config)."""
    from intssm.training import checkpoint
    from intssm.training.ptq import qspec_entry

    restore(start.qm, best)
    extra = checkpoint.extras(start.ck, "qspec")
    extra["qspec"] = qspec_entry(start.qm, start.ranges)
    extra["qat"] = {k: v for k, v in record.items() if v} | {"history": history, "config": start.how}
    if interrupted is not None:
        extra["interrupted"] = {"epoch": interrupted}
    return extra


class Diverged(IntssmError):
    """QAT met a non-finite loss or weight. ``best`` and ``history`` are the run's result up to the
    last finished epoch (all finite), ``where`` says where it stopped (epoch, step, what)."""

    def __init__(self, best, history: list, where: dict):
        super().__init__(f"QAT diverged in epoch {where['epoch']} (step {where['step']}: {where['what']})")
        self.best, self.history, self.where = best, history, where


def train(qm: QuantS4D, seq: str, param: str, epochs: int = 1, batch_size: int = 64, lr: float = 1e-3,
          limit: int | None = None, val_limit: int | None = None, seed: int = 0, on_step=None, on_epoch=None,
          max_minutes: float = 0.0, distill: float = 0.0, temp: float = 2.0, teacher=None, ema: float = 0.0,
          val_fraction: float | None = None):
    """QAT in place; returns (best snapshot (model state, discrete state), history, interrupted):
    ``interrupted`` is the epoch a KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one) stopped,
    whose partial work is dropped, else None.

    After each epoch the integer simulator scores the first ``val_limit`` validation sequences
    (None: the whole validation split); the best epoch is kept. On 2,000 sMNIST sequences the
    score moves by 1-2 points between epochs, enough to pick a worse model. With no validation
    split (``val_fraction`` 0) the last epoch is kept, and each epoch's record gives the integer
    accuracy on the training sequences (``train_int_acc``) so that the first integer accuracy a user
    sees is not the test set's. Float data enter through the model's input
    quantizer (``qm.iq``); a user ``teacher`` reads the data's own floats and is folded to read its codes.

    A non-finite loss or weight stops the run with :class:`Diverged`, which carries the best
    finished epoch's snapshot and the history so far.

    ``max_minutes`` > 0 ends training at the first step past the budget (the partial epoch is then
    validated like a full one). ``distill`` > 0 adds knowledge distillation (:func:`qat_step`)
    from ``teacher``, by default a frozen copy of the float model QAT starts from.

    ``ema`` = d in (0, 1) also keeps an exponential moving average of the trained float weights,
    w_ema <- d w_ema + (1 - d) w after every step (:class:`WeightEMA`); each epoch the integer
    simulator scores the averaged weights too (``val_int_acc_ema``), and either may be kept.
    Averaging damps the weights that oscillate across a rounding threshold under straight-through
    gradients (Nagel et al., 2022, "Overcoming Oscillations in Quantization-Aware Training").
    """
    check_options(epochs, batch_size, lr, max_minutes, distill, temp, ema)
    if distill > 0 and teacher is None:
        teacher = copy.deepcopy(qm.model).float()
    elif teacher is not None and qm.iq.float_data:
        from intssm.datapath.inputq import fold_input

        teacher = fold_input(teacher, qm.iq)
    if teacher is not None:
        teacher.eval()
        if teacher.cfg.d_output != qm.model.cfg.d_output or teacher.cfg.d_input != qm.model.cfg.d_input:
            raise IntssmError("the teacher's inputs and outputs must match the model's")
    torch.manual_seed(seed)
    t_start = time.time()
    params = configure(qm, param)
    tr = data.load(seq, "train", limit, val_fraction)
    va = data.load(seq, "val", val_limit, val_fraction)
    for ds in (tr, va):
        ds.check_labels(qm.dp.cfg.d_output)
    Ptr, Pva = qm.input_codes(tr.x, tr.lengths), qm.input_codes(va.x, va.lengths)
    score = (lambda: int_accuracy(qm, Pva, va.y, va.lengths)) if len(va) else (lambda: None)
    # no validation split: the integer accuracy on the training sequences is shown instead (never used to choose)
    train_score = (lambda: {}) if len(va) else (lambda: {"train_int_acc": int_accuracy(qm, Ptr, tr.y, tr.lengths)})
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = epochs * math.ceil(len(tr) / batch_size)
    gen = np.random.default_rng(seed)
    snap = lambda: (copy.deepcopy(qm.model.state_dict()), copy.deepcopy(qm.discrete.state_dict()) if qm.discrete is not None else None)  # noqa: E731
    best_acc = score()
    best = snap()
    avg = WeightEMA(params, ema) if ema > 0 else None
    history = [{"epoch": 0, "val_int_acc": best_acc} | train_score()]
    if on_epoch:
        on_epoch(history[0])
    step, out_of_time = 0, False
    interrupted = None
    try:
        for ep in range(epochs):
            t0 = time.time()
            perm = gen.permutation(len(tr))
            run_loss, seen = 0.0, 0
            for i in range(0, len(perm), batch_size):
                idx = np.sort(perm[i : i + batch_size])
                for g in opt.param_groups:
                    g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
                loss = qat_step(qm, opt, params, Ptr[idx], tr.y[idx], teacher, distill, temp, tr.lengths[idx])
                if not math.isfinite(loss) or not all(bool(torch.isfinite(p).all()) for p in params):
                    raise Diverged(best, history, {"epoch": ep + 1, "step": step + 1,
                                                   "what": "non-finite loss" if not math.isfinite(loss) else "non-finite weights"})
                if avg is not None:
                    avg.update()
                step += 1
                run_loss += loss * len(idx)
                seen += len(idx)
                if on_step:
                    on_step(len(idx), run_loss / seen)
                if max_minutes and time.time() - t_start > 60 * max_minutes:
                    out_of_time = True
                    break
            acc = score()
            rec = {"epoch": ep + 1, "train_loss": run_loss / seen, "val_int_acc": acc} | train_score() | {"seconds": time.time() - t0}
            if out_of_time:
                rec["stopped"] = f"time budget of {max_minutes} min, after {seen} sequences of this epoch"
            if not len(va) or acc > best_acc:  # no validation split: the last epoch
                best_acc, best = acc, snap()
            if avg is not None and len(va):
                with avg.swapped_in():
                    rec["val_int_acc_ema"] = acc_ema = score()
                    if acc_ema > best_acc:
                        best_acc, best = acc_ema, snap()
            history.append(rec)
            if on_epoch:
                on_epoch(rec)
            if out_of_time:
                break
    except KeyboardInterrupt:
        interrupted = len(history)
    return best, history, interrupted
