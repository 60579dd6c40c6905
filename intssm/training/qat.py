"""Quantization-aware training through the quantized recurrence (straight-through estimators).

The datapath (scales, multipliers, LUTs) is fixed by calibration; QAT moves the float weights
under their quantizers. Three parameterisations of Abar (the paper's):

  continuous  A and dt are trained; Abar = exp(dt A) is recomputed and quantized every step
  frozen      A and dt are frozen (Abar fixed from the float model); B, C, D and the rest train
  discrete    Abar and Bbar are parameters themselves, initialised from the float model

Model selection uses the integer model's accuracy on validation sequences. Training never runs the
integer model itself: the caller passes the scoring function (``score(qm, codes, y, lengths) ->
accuracy``; :func:`intssm.integer.score.int_accuracy` runs the simulator), so ``intssm.training``
imports nothing from ``intssm.integer``.

:class:`QATArgs` holds every option; :func:`train` runs QAT on a quantized model in place;
:func:`run` is the whole ``intssm qat`` recipe (start, checks, training, the checkpoint written).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from intssm import data
from intssm.datapath.inputq import model_input
from intssm.errors import IntssmError
from intssm.training.qmodel import QuantS4D

PARAMS = ("continuous", "frozen", "discrete")
RANGES = ("config", "calibrated")  # QATArgs.ranges
GRAD_CLIP = 1.0  # global gradient-norm clip: straight-through gradients through 784 steps can spike
SSM_CONTINUOUS = ("log_dt", "log_A_re", "A_im")

#: score(qm, input codes (n, L, d), labels (n,), lengths (n,) or None) -> the integer model's accuracy
Score = Callable[[QuantS4D, np.ndarray, np.ndarray, "np.ndarray | None"], float]


@dataclass
class QATArgs:
    """Every option of a QAT run, passed whole to :func:`train` and :func:`run` (``intssm qat``'s options)."""

    param: str = "frozen"  # Abar parameterisation: continuous | frozen | discrete (PARAMS)
    epochs: int | None = None  # passes over the training sequences (None: the small-data rule, plan())
    batch_size: int | None = None  # sequences per optimizer step (None: plan())
    lr: float = 1e-3  # peak learning rate, cosine-decayed to 0 over the run (AdamW, no weight decay)
    warmup: float | None = None  # share of the steps warming the learning rate up linearly (None: plan())
    limit: int | None = None  # first N training sequences (None: all)
    val_limit: int | None = None  # first N validation sequences score each epoch (None: the whole split)
    seed: int = 0  # Torch's seed and the order of the training sequences
    max_minutes: float = 0.0  # end at the first step past this budget (0 = none)
    distill: float = 0.0  # knowledge-distillation weight alpha in [0, 1] (0 = off)
    distill_temp: float = 2.0  # distillation temperature T
    ema: float = 0.0  # decay of the weight average scored beside the live weights, e.g. 0.999 (0 = off)
    val_fraction: float | None = None  # validation share of the training sequences (None: run() takes the checkpoint's)
    # how run() builds the model it trains
    config: str | None = None  # preset or JSON file (None: w8a8 for a float checkpoint; a quantized one keeps its own)
    calib: int = 256  # calibration sequences (a float checkpoint's PTQ)
    equalize: float = 0.0  # state equalization strength before calibration (0 = off)
    teacher: str | None = None  # float checkpoint to distill from (None: the float weights QAT starts from)
    ranges: str = "config"  # config: the config's range policies | calibrated: activation/input ranges chosen on the calibration sequences (intssm.training.start)

    def check(self) -> None:
        """Refuse options outside their ranges (NaN and inf included), before any work; messages
        name the command-line options."""
        from intssm.training.equalize import check_strength

        if self.limit is not None and self.limit < 1:
            raise IntssmError(f"--limit must be a positive number of sequences, got {self.limit}")
        if self.param not in PARAMS:
            raise IntssmError(f"--param must be one of {', '.join(PARAMS)}, got {self.param!r}")
        if not all(math.isfinite(v) for v in (self.lr, self.max_minutes, self.distill, self.distill_temp, self.ema)):
            raise IntssmError("--lr, --max-minutes, --distill, --distill-temp and --ema must be finite numbers")
        if (self.epochs or 1) < 1 or (self.batch_size or 1) < 1 or self.lr <= 0 or self.max_minutes < 0:
            raise IntssmError("--epochs, --batch-size and --lr must be positive (--max-minutes >= 0)")
        if self.warmup is not None and not 0 <= self.warmup < 1:
            raise IntssmError(f"--warmup must be a share of the steps in [0, 1), got {self.warmup}")
        if not 0 <= self.distill <= 1 or self.distill_temp <= 0:
            raise IntssmError(f"--distill must be in [0, 1] and --distill-temp > 0, got {self.distill} and {self.distill_temp}")
        if not 0 <= self.ema < 1:
            raise IntssmError(f"--ema must be in [0, 1) (0 = off), got {self.ema}")
        if self.calib < 1 or (self.val_limit is not None and self.val_limit < 1):
            raise IntssmError("--calib and --val-limit must be positive")
        if self.teacher is not None and self.distill == 0:
            raise IntssmError("--teacher needs --distill > 0")
        check_strength(self.equalize, "--equalize")
        if self.ranges not in RANGES:
            raise IntssmError(f"--ranges must be one of {', '.join(RANGES)}, got {self.ranges!r}")

    def record(self) -> dict:
        """What a quantized checkpoint's ``qat`` entry records of the options (zeros and None left out)."""
        d = {"param": self.param, "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "warmup": self.warmup,
             "ema": self.ema,
             "equalize": self.equalize,
             "distill": {"alpha": self.distill, "temp": self.distill_temp, "teacher": str(self.teacher) if self.teacher else "start"}
             if self.distill > 0 else None}
        return {k: v for k, v in d.items() if v}


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


@dataclass
class Start:
    """The quantized model QAT starts from, and where it came from."""

    qm: QuantS4D
    ranges: dict  # the calibrated ranges its datapath was built on
    how: str  # the config, as the checkpoint's qat entry records it
    ck: dict  # the checkpoint it was read from
    seq: str  # its dataset
    val_fraction: float | None


def start_from(ckpt, config: str | None = None, calib: int = 256, equalize: float = 0.0, ranges: str = "config") -> Start:
    """A float checkpoint gets PTQ at ``config`` (default w8a8) on ``calib`` training sequences
    (states equalized first if ``equalize`` > 0; with ``ranges`` "calibrated" the activation and
    input range policies of least integer loss on those sequences,
    :func:`intssm.training.start.calibrated_start`); a quantized one is rebuilt, and re-quantized on
    its stored ranges if ``config`` is given (progressive quantization)."""
    from intssm.training import checkpoint
    from intssm.training.ptq import from_checkpoint, ptq_dataset, requantize_model
    from intssm.datapath.qspec import get_config
    from intssm.datapath.ranges import ranges_from_json

    model, ck = checkpoint.load(ckpt)
    model = model.double()
    seq = checkpoint.dataset_seq(ck)
    vfrac = checkpoint.val_fraction(ck)
    if "qspec" in ck:
        if ranges != "config":
            raise IntssmError("--ranges calibrated applies to a float checkpoint, at calibration; this one is already quantized")
        if equalize:
            raise IntssmError("--equalize applies to a float checkpoint, before calibration; this one is already quantized")
        qm = from_checkpoint(model, ck)
        ranges = ranges_from_json(ck["qspec"]["ranges"])
        if config is not None:
            qm = requantize_model(qm, get_config(config), ranges)
        how = "from checkpoint" if config is None else f"{config} (re-quantized on the checkpoint's ranges)"
    else:
        config = config or "w8a8"
        cal = data.load(seq, "train", calib, vfrac)
        how = config if not equalize else f"{config}, states equalized (alpha {equalize})"
        if ranges == "calibrated":
            from intssm.training.start import calibrated_start

            qm, rng, chose, _ = calibrated_start(model, get_config(config), cal, lambda m, q, ds: ptq_dataset(m, q, ds, equalize))
            how += f", ranges chosen on the calibration sequences ({chose})"
        else:
            qm, rng = ptq_dataset(model, get_config(config), cal, equalize)
        return Start(qm, rng, how, ck, seq, vfrac)
    return Start(qm, ranges, how, ck, seq, vfrac)


def result_entries(start: Start, best, history: list, interrupted, args: QATArgs) -> dict:
    """The checkpoint entries of a finished (or interrupted) QAT run: ``start.qm`` set to the kept
    snapshot ``best``, its qspec, and the ``qat`` record (the options, history and config)."""
    from intssm.training import checkpoint
    from intssm.training.ptq import qspec_entry

    restore(start.qm, best)
    extra = checkpoint.extras(start.ck, "qspec")
    extra["qspec"] = qspec_entry(start.qm, start.ranges)
    extra["qat"] = args.record() | {"history": history, "config": start.how}
    if interrupted is not None:
        extra["interrupted"] = {"epoch": interrupted}
    return extra


class Diverged(IntssmError):
    """QAT met a non-finite loss or weight. ``best`` and ``history`` are the run's result up to the
    last finished epoch (all finite), ``where`` says where it stopped (epoch, step, what)."""

    def __init__(self, best, history: list, where: dict):
        super().__init__(f"QAT diverged in epoch {where['epoch']} (step {where['step']}: {where['what']})")
        self.best, self.history, self.where = best, history, where


MIN_STEPS = 300  # optimizer steps a run takes at least when --epochs is not given (the small-data rule)
MAX_BATCH = 64  # the batch of a large training set (sMNIST)
WARMUP = 0.05  # share of the steps warming up, when the rule runs more than one epoch


def plan(args: QATArgs, n_train: int) -> QATArgs:
    """``args`` with the options left at None filled by the small-data rule, for a training split of
    ``n_train`` sequences (the whole split, before ``--limit``, so that a quick run stays quick):

    - batch: n/16 sequences, at least 8 and at most :data:`MAX_BATCH` (as ``train``'s);
    - epochs: the fewest giving at least :data:`MIN_STEPS` optimizer steps at that batch;
    - warm-up: the first :data:`WARMUP` of the steps when the rule runs more than one epoch, else none;
      then the cosine decay to 0.

    sMNIST (50,000 training sequences) keeps one epoch of 782 steps at batch 64 with no warm-up; a
    dataset of 40 sequences gets batch 8 and 60 epochs of 5 steps (300 steps)."""
    batch = args.batch_size or int(min(MAX_BATCH, max(8, n_train // 16)))
    epochs = args.epochs or max(1, math.ceil(MIN_STEPS / max(1, math.ceil(n_train / batch))))
    warmup = args.warmup if args.warmup is not None else WARMUP if args.epochs is None and epochs > 1 else 0.0
    return replace(args, epochs=epochs, batch_size=batch, warmup=warmup)


def train(qm: QuantS4D, seq: str, args: QATArgs, score: Score, *, teacher=None, on_step=None, on_epoch=None):
    """QAT in place; returns (best snapshot (model state, discrete state), history, interrupted):
    ``interrupted`` is the epoch a KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one) stopped,
    whose partial work is dropped, else None.

    After each epoch ``score`` (the integer model's accuracy, :data:`Score`) rates the first
    ``args.val_limit`` validation sequences
    (None: the whole validation split); the best epoch is kept. On 2,000 sMNIST sequences the
    score moves by 1-2 points between epochs, enough to pick a worse model. With no validation
    split (``args.val_fraction`` 0) the last epoch is kept, and each epoch's record gives the integer
    accuracy on the training sequences (``train_int_acc``) so that the first integer accuracy a user
    sees is not the test set's. Float data enter through the model's input
    quantizer (``qm.iq``); a user ``teacher`` reads the data's own floats and is folded to read its codes.

    A non-finite loss or weight stops the run with :class:`Diverged`, which carries the best
    finished epoch's snapshot and the history so far.

    ``args.max_minutes`` > 0 ends training at the first step past the budget (the partial epoch is then
    validated like a full one). ``args.distill`` > 0 adds knowledge distillation (:func:`qat_step`)
    from ``teacher``, by default a frozen copy of the float model QAT starts from.

    ``args.ema`` = d in (0, 1) also keeps an exponential moving average of the trained float weights,
    w_ema <- d w_ema + (1 - d) w after every step (:class:`WeightEMA`); each epoch ``score`` rates
    the averaged weights too (``val_int_acc_ema``), and either may be kept.
    Averaging damps the weights that oscillate across a rounding threshold under straight-through
    gradients (Nagel et al., 2022, "Overcoming Oscillations in Quantization-Aware Training").
    """
    args.check()
    if None in (args.epochs, args.batch_size, args.warmup):
        args = plan(args, len(data.load(seq, "train", None, args.val_fraction)))
    distill, temp, ema, seed, lr = args.distill, args.distill_temp, args.ema, args.seed, args.lr
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
    params = configure(qm, args.param)
    tr = data.load(seq, "train", args.limit, args.val_fraction)
    va = data.load(seq, "val", args.val_limit, args.val_fraction)
    for ds in (tr, va):
        ds.check_labels(qm.dp.cfg.d_output)
    Ptr, Pva = qm.input_codes(tr.x, tr.lengths), qm.input_codes(va.x, va.lengths)
    val_score = (lambda: score(qm, Pva, va.y, va.lengths)) if len(va) else (lambda: None)
    # no validation split: the integer accuracy on the training sequences is shown instead (never used to choose)
    train_score = (lambda: {}) if len(va) else (lambda: {"train_int_acc": score(qm, Ptr, tr.y, tr.lengths)})
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    epochs, batch_size, max_minutes = args.epochs, args.batch_size, args.max_minutes
    steps = epochs * math.ceil(len(tr) / batch_size)
    warm = int(args.warmup * steps)
    gen = np.random.default_rng(seed)
    snap = lambda: (copy.deepcopy(qm.model.state_dict()), copy.deepcopy(qm.discrete.state_dict()) if qm.discrete is not None else None)  # noqa: E731
    best_acc = val_score()
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
                for g in opt.param_groups:  # linear warm-up over `warm` steps, then cosine to 0 at `steps`
                    g["lr"] = (lr * (step + 1) / warm if step < warm else
                               lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm))))
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
            acc = val_score()
            rec = {"epoch": ep + 1, "train_loss": run_loss / seen, "val_int_acc": acc} | train_score() | {"seconds": time.time() - t0}
            if out_of_time:
                rec["stopped"] = f"time budget of {max_minutes} min, after {seen} sequences of this epoch"
            if not len(va) or acc > best_acc:  # no validation split: the last epoch
                best_acc, best = acc, snap()
            if avg is not None and len(va):
                with avg.swapped_in():
                    rec["val_int_acc_ema"] = acc_ema = val_score()
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


def run(ckpt, out, args: QATArgs, score: Score, *, progress: bool = True, on_epoch=None, on_warning=None) -> dict:
    """The ``intssm qat`` recipe: check the options and ``out``, build the start (:func:`start_from`),
    load and check the teacher, train (:func:`train`), write the quantized checkpoint ``out`` with
    the kept snapshot (float64, as trained: float32 could flip a code at a rounding tie).

    Options left at None follow :func:`plan`. Returns {"out", "history", "best_val_int_acc" (None
    without a validation split), "epoch" (the kept one), "kept" (its history key), "interrupted" (the
    epoch a Ctrl-C / SIGTERM stopped, whose checkpoint is marked interrupted; None), "args" (the
    options as run), "checks" (:func:`intssm.training.start.start_quality` of the start and the kept model
    on the first training sequences), "warnings"}. ``on_warning(text)`` hears each warning when it
    arises: a start far from the float model (before training), a collapse or a saturating state at
    the end (:mod:`intssm.training.start`). A diverged run writes its best finished epoch, marked
    diverged, and raises :class:`~intssm.errors.IntssmError`. ``progress``: a progress bar on stderr;
    ``on_epoch(record)`` after every epoch."""
    from intssm import outputs
    from intssm.progress import progress_bar
    from intssm.training import checkpoint

    args.check()
    outputs.check_file(out, inputs=[ckpt, args.teacher, args.config], what="--out")
    teacher = None
    if args.teacher is not None:
        teacher, tck = checkpoint.load(args.teacher)
        if "qspec" in tck:
            raise IntssmError(f"{args.teacher}: the teacher must be a float checkpoint, not a quantized one")
    st = start_from(ckpt, args.config, args.calib, args.equalize, args.ranges)
    from intssm.training.start import CHECK_SEQUENCES, end_words, far_words, start_quality

    warnings = []

    def warn(msg):
        if msg:
            warnings.append(msg)
            if on_warning:
                on_warning(msg)

    check_ds = data.load(st.seq, "train", CHECK_SEQUENCES, st.val_fraction if args.val_fraction is None else args.val_fraction)
    checks = {"sequences": len(check_ds), "start": start_quality(st.qm, check_ds)}
    warn(far_words(checks["start"]))
    if teacher is not None:
        sc, tc = st.qm.model.cfg, teacher.cfg
        if (tc.d_input, tc.d_output) != (sc.d_input, sc.d_output):
            raise IntssmError(f"--teacher {args.teacher} reads {tc.d_input} features and gives {tc.d_output} classes; the model "
                              f"trained has {sc.d_input} and {sc.d_output}: give a teacher trained on the same dataset")
        t_sum, s_sum = (tck.get("dataset") or {}).get("checksum"), (st.ck.get("dataset") or {}).get("checksum")
        if t_sum is not None and s_sum is not None and t_sum != s_sum:
            raise IntssmError(f"--teacher {args.teacher} was trained on another dataset than {ckpt} (checksums differ); "
                              "give a teacher trained on the same dataset")
    if args.val_fraction is None:
        args = replace(args, val_fraction=st.val_fraction)
    args = plan(args, len(data.load(st.seq, "train", None, args.val_fraction)))
    n_train = len(data.load(st.seq, "train", args.limit, args.val_fraction))
    diverged = None
    with progress_bar(f"QAT ({args.param})", args.epochs * n_train, enabled=progress) as adv:
        try:
            best, history, interrupted = train(st.qm, st.seq, args, score, teacher=teacher, on_epoch=on_epoch,
                                               on_step=lambda n, loss: adv(n, info=f"loss {loss:.3f}"))
        except Diverged as e:
            best, history, interrupted, diverged = e.best, e.history, None, e
    extra = result_entries(st, best, history, interrupted, args)
    if interrupted is None and diverged is None:
        checks["end"] = start_quality(st.qm, check_ds)
        warn(end_words(checks["start"], checks["end"]))
    extra["qat"]["checks"] = checks
    if diverged is not None:
        checkpoint.save(out, st.qm.model, **extra, diverged=diverged.where)
        raise IntssmError(f"{diverged}; saved {out} with the best finished epoch (epoch {kept(history)[1]}), marked "
                          "diverged; lower --lr")
    checkpoint.save(out, st.qm.model, **extra)
    best_acc, best_ep, key = kept(history)
    return {"out": str(out), "history": history, "best_val_int_acc": best_acc, "epoch": best_ep, "kept": key,
            "interrupted": interrupted, "args": args, "checks": checks, "warnings": warnings}
