"""``intssm train``'s recipe: its options, the small-data rule, resuming an interrupted run, the
model's configuration (preset + overrides + the data's ends) and the checkpoint it writes.

Two schedules, chosen by :func:`uses_steps` (the rule is stated there and in ``docs/usage.md``):

- **epochs** (sMNIST-sized uint8 data, or ``--epochs`` given): ``epochs`` passes at batch 128
  (n/16, at least 8, below 2,048 sequences), one epoch of warm-up then cosine decay, the epoch with
  the best validation accuracy kept -- the recipe of every shipped sMNIST checkpoint.
- **steps** (fewer than :data:`SMALL_DATA` training sequences, or float features, unless
  ``--epochs`` is given): a budget of about :data:`STEPS` optimizer steps (whole epochs) at batch
  n/8 in [8, 64], warm-up over 5% of them then cosine decay to 0, inputs standardised per channel
  on the training sequences and the standardisation folded into the encoder of the saved model (it
  reads the raw data), the best validation score kept (accuracy, then loss) and early stopping after
  half the epochs without a better one -- the float recipe of ``intssm fit``
  (:func:`intssm.training.train.train_steps`) on ``train``'s validation split.

Torch-free at import: a bad option is refused before Torch loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from intssm.errors import IntssmError, Interrupted

SMALL_DATA = 2000  # fewer training sequences than this (or float features): the step schedule
STEPS = 1000  # optimizer steps of the step schedule (default of --steps)
WARMUP_SHARE = 0.05  # of the step schedule spent warming up
PATIENCE_SHARE = 0.5  # of the step schedule's epochs without a better validation score: early stop
EPOCHS = 30  # the epoch schedule's default
MAX_SEED = 2**32 - 1


@dataclass
class TrainOptions:
    """What ``intssm train`` takes (None: the recipe's choice)."""

    out: Path
    preset: str = "paper-small"  # model body: paper-small | base | tiny
    seq: str = "smnist"  # dataset (intssm.data.load)
    epochs: int | None = None  # None: 30, or the step schedule on small / float data (uses_steps)
    steps: int | None = None  # optimizer steps of the step schedule (None: STEPS); given, it chooses that schedule
    batch_size: int | None = None  # None: 128 or n/16 (epochs), n/8 in [8, 64] (steps)
    lr: float = 1e-2  # encoder, mixing, decoder, C, D
    ssm_lr: float = 1e-3  # dt, A, B (no weight decay)
    weight_decay: float = 0.01  # AdamW, non-SSM parameters
    dropout: float | None = None  # None: the preset's
    pool: str | None = None  # mean | last; None: the preset's ('last' for variable-length data)
    val_fraction: float | None = None  # validation share (None: intssm.data.VAL_FRACTION; sMNIST: its last 10,000)
    seed: int = 0  # init, shuffling, dropout
    limit: int | None = None  # first N training / validation sequences
    threads: int = 0  # Torch threads (0: Torch's default)
    d_model: int | None = None  # preset overrides
    d_state: int | None = None
    n_layers: int | None = None
    device: str = "cpu"  # cpu | cuda
    max_minutes: float = 0.0  # stop after the epoch that would pass this budget (0: none)
    min_decay: float = 0.0  # keep 1 - |Abar| >= this for every mode (0: off)
    resume: Path | None = None  # an interrupted run's checkpoint to continue
    given: tuple = field(default=())  # options given on the command line (a resumed run refuses any that differ)


#: the options a resumed run takes from the interrupted run's checkpoint
RESUMED_OPTIONS = ("seq", "preset", "epochs", "steps", "batch_size", "lr", "ssm_lr", "weight_decay", "seed", "limit", "threads",
                   "max_minutes", "val_fraction", "d_model", "d_state", "n_layers", "dropout", "pool", "min_decay")


def check_seed_threads(seed: int, threads: int = 0) -> None:
    """Seeds lie in 0..2**32-1 (every generator intssm seeds takes them); --threads >= 0 (0: the default)."""
    if not 0 <= seed <= MAX_SEED:
        raise IntssmError(f"--seed must be in 0..{MAX_SEED}, got {seed}")
    if not 0 <= threads <= 4096:
        raise IntssmError(f"--threads must be in 0..4096 (0 = Torch's default), got {threads}")


def check(o: TrainOptions) -> None:
    """Refuse options outside their ranges (messages name the CLI options)."""
    from intssm.datapath.modelconfig import PRESETS  # torch-free

    if o.preset not in PRESETS:
        raise IntssmError(f"unknown preset {o.preset!r}; choose one of {', '.join(PRESETS)}")
    nums = {"--lr": o.lr, "--ssm-lr": o.ssm_lr, "--max-minutes": o.max_minutes, "--weight-decay": o.weight_decay,
            "--min-decay": o.min_decay, "--dropout": o.dropout or 0.0, "--val-fraction": o.val_fraction or 0.0}
    bad = [k for k, v in nums.items() if not math.isfinite(v)]
    if bad:
        raise IntssmError(f"{', '.join(bad)} must be finite numbers")
    if ((o.epochs is not None and o.epochs < 1) or (o.batch_size is not None and o.batch_size < 1) or o.lr <= 0 or o.ssm_lr <= 0
            or o.max_minutes < 0 or o.weight_decay < 0):
        raise IntssmError("--epochs, --batch-size, --lr and --ssm-lr must be positive (--max-minutes, --weight-decay >= 0)")
    if o.steps is not None and o.steps < 1:
        raise IntssmError(f"--steps must be positive, got {o.steps}")
    if o.steps is not None and o.epochs is not None:
        raise IntssmError("give --epochs (the epoch schedule) or --steps (the step schedule), not both")
    if o.pool is not None and o.pool not in ("mean", "last"):
        raise IntssmError(f"--pool must be mean or last, got {o.pool!r}")
    over = overrides(o)
    if any(v < 1 for v in over.values()) or over.get("d_state", 2) % 2:
        raise IntssmError(f"--d-model, --d-state and --n-layers must be positive (d_state even), got {over}")


def overrides(o: TrainOptions) -> dict:
    """The preset overrides given (d_model, d_state, n_layers)."""
    return {k: getattr(o, k) for k in ("d_model", "d_state", "n_layers") if getattr(o, k) is not None}


def uses_steps(o: TrainOptions, n_split: int, is_uint8: bool) -> bool:
    """The small-data rule: the step schedule unless ``--epochs`` is given, when ``--steps`` is given,
    the training split (``n_split`` sequences, counted before ``--limit``, so a quick run of a large
    dataset keeps its schedule) holds fewer than :data:`SMALL_DATA`, or the features are floats.
    sMNIST and psMNIST (50,000 uint8 sequences) keep the epoch schedule."""
    if o.epochs is not None:
        return False
    return o.steps is not None or n_split < SMALL_DATA or not is_uint8


def step_batch_size(n: int) -> int:
    """Sequences per step of the step schedule: n/8 within [8, 64] (tens of sequences still give
    several steps per pass)."""
    return int(min(64, max(8, n // 8)))


def plan(o: TrainOptions, n_train: int, is_uint8: bool, n_split: int | None = None):
    """The :class:`~intssm.training.train.TrainArgs` of the schedule :func:`uses_steps` chooses for
    a training split of ``n_split`` sequences (None: ``n_train``), ``n_train`` of them trained on."""
    from intssm.training.train import TrainArgs, auto_batch_size

    common = dict(lr=o.lr, ssm_lr=o.ssm_lr, weight_decay=o.weight_decay, seed=o.seed, limit=o.limit, threads=o.threads,
                  device=o.device, max_minutes=o.max_minutes, val_fraction=o.val_fraction)
    if not uses_steps(o, n_train if n_split is None else n_split, is_uint8):
        return TrainArgs(epochs=o.epochs or EPOCHS, batch_size=o.batch_size or auto_batch_size(n_train), **common)
    b = o.batch_size or step_batch_size(n_train)
    epochs = max(1, math.ceil((o.steps or STEPS) / math.ceil(n_train / b)))
    return TrainArgs(epochs=epochs, batch_size=b, warmup_epochs=WARMUP_SHARE * epochs, standardise=True,
                     patience=max(1, math.ceil(PATIENCE_SHARE * epochs)), loss_breaks_ties=True, **common)


def model_config(o: TrainOptions, info):
    """The model's configuration: the preset, its overrides, and the data's ends (features per
    step, classes; last-step pooling for variable-length data unless ``--pool`` says otherwise)."""
    from intssm.training.model import PRESETS

    ends = {"d_input": info.d_input, "d_output": info.n_classes}
    pool = o.pool if o.pool is not None else ("last" if info.varlen else None)
    ends |= {"pool": pool} if pool else {}
    ends |= {"dropout": o.dropout} if o.dropout is not None else {}
    return replace(PRESETS[o.preset], **overrides(o), **ends, min_decay=o.min_decay)


def recorded_options(path, rck: dict) -> dict:
    """The options of the interrupted run a checkpoint ``rck`` records (its ``train_args``,
    ``dataset`` and ``model_config`` entries). Runs recorded before the step schedule existed
    (no ``recipe`` entry) ran the epoch schedule with the epochs and batch size they record."""
    if not isinstance(rck.get("resume"), dict) or not isinstance(rck.get("train_args"), dict):
        raise IntssmError(f"{path} is not an interrupted training run (no resume state); only `intssm train` writes one")
    ta = rck["train_args"]
    try:
        rec = ta.get("recipe") or {"epochs": ta["epochs"], "steps": None, "batch_size": ta["batch_size"]}
        over, mc = ta["overrides"], rck["model_config"]
        return dict(seq=rck["dataset"]["seq"], preset=ta["preset"], epochs=rec["epochs"], steps=rec["steps"],
                    batch_size=rec["batch_size"], lr=ta["lr"], ssm_lr=ta["ssm_lr"], weight_decay=ta["weight_decay"],
                    seed=ta["seed"], limit=ta["limit"], threads=ta["threads"], max_minutes=ta["max_minutes"],
                    val_fraction=ta["val_fraction"], d_model=over.get("d_model"), d_state=over.get("d_state"),
                    n_layers=over.get("n_layers"), dropout=mc["dropout"], pool=mc["pool"], min_decay=mc["min_decay"])
    except (KeyError, TypeError, AttributeError) as e:
        raise IntssmError(f"{path}: incomplete training record ({type(e).__name__}: {e})") from None


def resumed(o: TrainOptions) -> tuple[TrainOptions, dict]:
    """The interrupted run ``o.resume`` as options to run again, and its resume state. An option
    given on the command line (``o.given``) that differs from the run's is refused (a dataset path
    given another way -- relative, through a symlink -- is the same dataset), as is data whose
    checksum changed since."""
    from intssm import data
    from intssm.training import checkpoint

    rck = checkpoint.load_raw(o.resume)
    now = recorded_options(o.resume, rck)
    state = rck["resume"]
    checkpoint.check_resume(o.resume, state)

    def same(k, a, b):
        if k == "seq" and a not in data.SEQS and b not in data.SEQS:
            return Path(data.resolve(str(a))).resolve() == Path(data.resolve(str(b))).resolve()
        return a == b

    for k in o.given:
        if k in RESUMED_OPTIONS and not same(k, getattr(o, k), now[k]):
            opt = "--" + k.replace("_", "-")
            raise IntssmError(f"{opt} {getattr(o, k)} conflicts with the interrupted run's {opt} {now[k]}: a resumed run goes on "
                              f"with its own options; drop {opt}, or start a new run without --resume")
    recorded = (rck.get("dataset") or {}).get("checksum")
    if recorded is not None and data.load(now["seq"], "test", 1).checksum != recorded:
        raise IntssmError(f"{o.resume}: the dataset {now['seq']} changed since the run was interrupted (checksum differs); "
                          "resuming would mix two datasets: start a new run")
    return replace(o, **now), state


@dataclass
class TrainResult:
    """What a finished ``intssm train`` run reports."""

    out: Path
    history: list  # per-epoch records (intssm.training.train.train)
    best_epoch: int
    val_acc: float | None  # None: no validation split, the last epoch kept
    epochs: int  # the schedule's epochs
    schedule: str  # "epochs" | "steps"


def run(o: TrainOptions, say=print, on_epoch=None, progress=None) -> TrainResult:
    """Train as ``intssm train`` does and write the checkpoint ``o.out``. ``say`` gets one line
    describing the run, ``on_epoch`` each epoch's record, ``progress(total)`` (a context manager
    yielding ``advance(n, info=...)``) the sequences seen. A Ctrl-C saves the best epoch so far
    (marked interrupted, with the state ``--resume`` needs) and raises :class:`Interrupted`; a
    diverged run saves the best finite epoch (marked diverged) and raises :class:`IntssmError`."""
    from contextlib import nullcontext

    from intssm import outputs

    if o.limit is not None and o.limit < 1:
        raise IntssmError(f"--limit must be a positive number of sequences, got {o.limit}")
    check_seed_threads(o.seed, o.threads)  # before Torch is imported: a bad option costs nothing
    outputs.check_file(o.out, inputs=[o.seq, o.resume], what="--out")
    state = None
    if o.resume is not None:
        o, state = resumed(o)
    check(o)
    import torch

    from intssm import data
    from intssm.training import checkpoint
    from intssm.training.model import S4DModel, n_params
    from intssm.training.train import args_dict, train

    if o.device not in ("cpu", "cuda") or (o.device == "cuda" and not torch.cuda.is_available()):
        raise IntssmError(f"--device must be cpu or cuda (with a GPU present), got {o.device!r}")
    info = data.info(o.seq)
    mcfg = model_config(o, info)
    n_split = len(data.load(o.seq, "train", None, o.val_fraction))
    n_train = min(n_split, o.limit or n_split)
    args = plan(o, n_train, info.is_uint8, n_split)
    schedule = "steps" if args.standardise else "epochs"
    model = S4DModel(mcfg, seed=o.seed)
    has_val = o.seq in data.SEQS or len(data.load(o.seq, "val", o.limit, o.val_fraction)) > 0
    why = "--steps" if o.steps is not None else "float features" if not info.is_uint8 else f"fewer than {SMALL_DATA:,} sequences"
    how = (f"step schedule ({why}): about {o.steps or STEPS} steps, inputs standardised" + (", early stopping" if has_val else "")
           if schedule == "steps" else "epoch schedule")
    say(f"training {o.preset} ({n_params(model)} parameters; {info.d_input} features/step, {info.n_classes} classes, "
        f"pool {mcfg.pool}) on {o.seq}: {n_train} sequences x {args.epochs} epochs, batch {args.batch_size}; {how}")
    with (progress(args.epochs * n_train) if progress else nullcontext(lambda n, info="": None)) as adv:
        def on_step(ep, n, loss, acc):
            adv(n, info=f"ep {ep + 1} loss {loss:.3f} acc {acc:.3f}")

        try:
            best, history, st = train(model, o.seq, args, on_step=on_step, on_epoch=on_epoch, resume=state)
        except (KeyError, RuntimeError, ValueError) as e:
            if state is None:
                raise
            raise IntssmError(f"{o.resume}: its resume state does not fit this model ({type(e).__name__})") from None
    model.load_state_dict(best)
    ds = data.load(o.seq, "test")
    recipe = {"schedule": schedule, "epochs": o.epochs, "steps": o.steps, "batch_size": o.batch_size}
    extra = {"metrics": history, "dataset": checkpoint.dataset_entry(o.seq, ds, o.val_fraction),
             "train_args": args_dict(args) | {"preset": o.preset, "overrides": overrides(o), "recipe": recipe}}
    if st.get("standardisation") is not None:
        extra["standardisation"] = st["standardisation"]
    if st.get("diverged") is not None:
        d = st["diverged"]
        checkpoint.save(o.out, model, **extra, diverged=d)
        kept = f"the best of {len(history)} finite epoch(s)" if history else "the weights it started from"
        raise IntssmError(f"training diverged in epoch {d['epoch']} (step {d['step']}: {d['what']}); saved {o.out} with {kept}, "
                          "marked diverged; lower --lr / --ssm-lr or rescale the data")
    if st["interrupted"] is not None:
        extra |= {"interrupted": {"epoch": st["interrupted"]},
                  "resume": {k: v for k, v in st.items() if k not in ("interrupted", "diverged", "standardisation")}}
        try:
            checkpoint.save(o.out, model, **extra)
        except KeyboardInterrupt:  # another Ctrl-C, held until the save was renamed into place (outputs.atomic)
            pass
        done = len(history)
        kept = f"the best of {done} completed epoch(s)" if done else "the weights of the unfinished first epoch"
        raise Interrupted(f"interrupted in epoch {st['interrupted']}: saved {o.out} with {kept}, marked interrupted; "
                          f"continue with: intssm train --resume {o.out} -o FINAL.pt")
    checkpoint.save(o.out, model, **extra)
    if history[-1]["val_acc"] is None:
        best_epoch, val_acc = history[-1]["epoch"], None
    else:
        best_epoch = st["best_epoch"]
        val_acc = next(r["val_acc"] for r in history if r["epoch"] == best_epoch)
    return TrainResult(o.out, history, best_epoch, val_acc, args.epochs, schedule)

