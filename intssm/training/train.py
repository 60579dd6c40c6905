"""Float training in convolution mode: AdamW, cosine schedule, best-on-validation kept."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from intssm import data
from intssm.training.model import S4DModel


@dataclass
class TrainArgs:
    epochs: int = 30  # full passes over the 50k training sequences
    batch_size: int = 128
    lr: float = 1e-2  # encoder, mixing, decoder, C, D
    ssm_lr: float = 1e-3  # dt, A, B: lower lr, no weight decay (S4D recipe)
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0  # linear warm-up, then cosine to 0
    seed: int = 0
    limit: int | None = None  # first N training / validation sequences (quick runs)
    threads: int = 0  # torch threads, 0 = leave torch's default
    device: str = "cpu"  # torch device for float training ("cuda" where one is present)
    max_minutes: float = 0.0  # stop at the epoch boundary that would pass this budget (0 = none)
    val_fraction: float | None = None  # validation share of the training sequences (None: data.VAL_FRACTION; sMNIST: fixed 10k)
    standardise: bool = False  # standardise the inputs per channel (training split); folded into the encoder of the weights returned
    patience: int = 0  # stop after this many epochs without a better validation score (0: run every epoch)
    loss_breaks_ties: bool = False  # of epochs with equal validation accuracy keep the lower loss (else the first)


def auto_batch_size(n_train: int) -> int:
    """Default batch: 128, or n/16 (at least 8) for small datasets, so an epoch has >= ~16 steps."""
    return int(min(128, max(8, n_train // 16)))


def set_determinism(seed: int, threads: int = 0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


@torch.no_grad()
def evaluate(model: S4DModel, x: np.ndarray, y: np.ndarray, mode: str = "conv", batch: int = 500, progress=None,
             lengths: np.ndarray | None = None):
    """(accuracy, mean loss) of ``model`` on float inputs ``x`` (n L d), labels ``y`` and sequence
    ``lengths`` (n,) (None: all full), at the model's precision (float64 for a QAT checkpoint's weights)."""
    if len(y) == 0:
        return float("nan"), float("nan")
    model.eval()
    p0 = next(model.parameters())
    correct, loss_sum = 0, 0.0
    for i in range(0, len(y), batch):
        u = torch.from_numpy(x[i : i + batch]).to(p0.device, p0.dtype)
        t = torch.from_numpy(y[i : i + batch]).to(p0.device)
        lens = None if lengths is None else torch.from_numpy(lengths[i : i + batch]).to(p0.device)
        logits = model(u, mode=mode, lengths=lens)
        loss_sum += F.cross_entropy(logits, t, reduction="sum").item()
        correct += (logits.argmax(-1) == t).sum().item()
        if progress:
            progress(len(t))
    return correct / len(y), loss_sum / len(y)


def _copy(sd: dict) -> dict:
    return {k: v.detach().clone() for k, v in sd.items()}


def train(model: S4DModel, seq: str, args: TrainArgs, on_step=None, on_epoch=None, resume: dict | None = None):
    """Train ``model`` in place; returns (best state_dict, history list of per-epoch dicts, run state).

    With ``args.standardise`` the inputs are standardised per channel on the training sequences
    (:func:`standardisation`) and the returned best weights have it folded into the encoder
    (:func:`fold_standardisation`: they read the raw inputs; ``state["standardisation"]`` records
    it); the run state's weights stay those of the standardised inputs. With ``args.patience`` the
    run stops after that many epochs without a better validation score (the record's ``early_stop``).

    The run state holds what continuing needs at the last completed epoch (weights, optimizer,
    random generators, step, history): ``train(..., resume=state)`` picks up there and gives the
    weights an uninterrupted run gives. A KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by
    the caller) abandons the current epoch and returns what the completed epochs produced, with
    ``state["interrupted"]`` set to the epoch it stopped in.

    A non-finite training loss, validation loss or weight stops the run at once: the best state
    so far is returned (the initial weights if no epoch completed), nothing after it, with
    ``state["diverged"]`` saying where (epoch, step, what) and no resume state to go on from."""
    set_determinism(args.seed, args.threads)
    dev = torch.device(args.device)
    model.to(dev)
    t_start = time.time()
    tr = data.load(seq, "train", args.limit, args.val_fraction)
    va = data.load(seq, "val", args.limit, args.val_fraction)
    xtr, ytr, ltr = tr.as_float(), tr.y, tr.lengths
    xva, yva = va.as_float(), va.y
    tr.check_labels(model.cfg.d_output)
    mu_sd = standardisation(xtr, ltr) if args.standardise else None
    if mu_sd is not None:
        xtr, xva = _standardised(xtr, *mu_sd), _standardised(xva, *mu_sd)
    opt = torch.optim.AdamW(model.param_groups(args.lr, args.ssm_lr, args.weight_decay))
    steps_per_epoch = math.ceil(len(ytr) / args.batch_size)
    total = args.epochs * steps_per_epoch
    warm = int(args.warmup_epochs * steps_per_epoch)
    base_lrs = [g["lr"] for g in opt.param_groups]
    gen = np.random.default_rng(args.seed)
    best, best_acc, best_loss, best_epoch, history, step, first = None, -1.0, math.inf, 0, [], 0, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        gen.bit_generator.state = resume["numpy_rng"]
        torch.set_rng_state(resume["torch_rng"])
        best, best_acc, history, step = _copy(resume["best"]), resume["best_acc"], list(resume["history"]), resume["step"]
        best_loss, best_epoch = resume.get("best_loss", math.inf), resume.get("best_epoch", 0)
        first = len(history)

    def run_state(interrupted=None):
        return {"model": _copy(model.state_dict()), "optimizer": copy.deepcopy(opt.state_dict()), "numpy_rng": gen.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "best": best, "best_acc": best_acc, "best_loss": best_loss,
                "best_epoch": best_epoch, "history": list(history), "step": step, "interrupted": interrupted, "diverged": None}

    state = run_state()
    try:
        for epoch in range(first, args.epochs):
            ep = _epoch(model, opt, gen, args, epoch, step, total, warm, base_lrs, xtr, ytr, ltr, dev, on_step)
            step = ep["step"]
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                raise _NonFinite(epoch + 1, step, "a weight became NaN or inf")
            val_acc, val_loss = evaluate(model, xva, yva, lengths=va.lengths)
            if len(yva) and not math.isfinite(val_loss):
                raise _NonFinite(epoch + 1, step, "the validation loss is not finite")
            rec = {"epoch": epoch + 1, "train_loss": ep["loss"], "train_acc": ep["acc"], "val_loss": val_loss,
                   "val_acc": val_acc, "seconds": ep["seconds"]}
            history.append(rec)
            if len(yva) == 0:  # no validation split (val_fraction 0): the last epoch is kept
                rec["val_acc"] = rec["val_loss"] = None
                best, best_epoch = _copy(model.state_dict()), epoch + 1
            elif val_acc > best_acc or (args.loss_breaks_ties and val_acc == best_acc and val_loss < best_loss):
                best_acc, best_loss, best_epoch = val_acc, val_loss, epoch + 1
                best = _copy(model.state_dict())
            state = run_state()
            stop = args.max_minutes and time.time() - t_start + rec["seconds"] > 60 * args.max_minutes and epoch + 1 < args.epochs
            if stop:
                rec["stopped"] = f"time budget of {args.max_minutes} min"
            elif args.patience and len(yva) and epoch + 1 - best_epoch >= args.patience and epoch + 1 < args.epochs:
                rec["early_stop"] = f"no better validation score in {args.patience} epochs"
                stop = True
            if on_epoch:
                on_epoch(rec)
            if stop:
                break
    except KeyboardInterrupt:
        state["interrupted"] = len(history) + 1
        if best is None:  # stopped in the first epoch: nothing validated, keep the weights as they were
            best = state["model"]
    except _NonFinite as e:
        state["diverged"] = {"epoch": e.epoch, "step": e.step, "what": e.what}
        if best is None:  # nothing validated: the weights of the last state saved (the initial ones, or the resumed)
            best = state["model"]
    model.to("cpu")
    best = {k: v.cpu() for k, v in best.items()}
    if mu_sd is not None:  # the weights returned read the raw inputs
        model.load_state_dict(best)
        fold_standardisation(model, *mu_sd)
        best = _copy(model.state_dict())
        state["standardisation"] = {"mean": mu_sd[0].tolist(), "sd": mu_sd[1].tolist(), "folded": "into the encoder"}
    return best, history, state


def _standardised(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return ((x - mu) / sd).astype(np.float32)


class _NonFinite(Exception):
    """Training produced a non-finite loss or weight (:func:`train` stops there)."""

    def __init__(self, epoch: int, step: int, what: str):
        super().__init__(what)
        self.epoch, self.step, self.what = epoch, step, what


def _epoch(model, opt, gen, args, epoch, step, total, warm, base_lrs, xtr, ytr, ltr, dev, on_step) -> dict:
    """One pass over the training set; returns step, loss, accuracy and seconds."""
    model.train()
    t0 = time.time()
    perm = gen.permutation(len(ytr))
    run_loss, run_correct, seen = 0.0, 0, 0
    for i in range(0, len(perm), args.batch_size):
        idx = np.sort(perm[i : i + args.batch_size])
        u, t = torch.from_numpy(xtr[idx]).to(dev), torch.from_numpy(ytr[idx]).to(dev)
        lens = torch.from_numpy(ltr[idx]).to(dev)
        f = (step + 1) / max(1, warm) if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        for g, lr0 in zip(opt.param_groups, base_lrs):
            g["lr"] = lr0 * f
        logits = model(u, lengths=lens)
        loss = F.cross_entropy(logits, t)
        if not bool(torch.isfinite(loss)):
            raise _NonFinite(epoch + 1, step + 1, "the training loss is not finite")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.project()
        step += 1
        run_loss += loss.item() * len(t)
        run_correct += (logits.argmax(-1) == t).sum().item()
        seen += len(t)
        if on_step:
            on_step(epoch, len(t), run_loss / seen, run_correct / seen)
    return {"step": step, "loss": run_loss / seen, "acc": run_correct / seen, "seconds": time.time() - t0}


def args_dict(args: TrainArgs) -> dict:
    return asdict(args)


# --- step-budgeted training (intssm fit; intssm train's step schedule): inputs standardised ---

def standardisation(x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (float64, (d,)) of the valid steps of float
    sequences ``x`` (n, L, d); a constant channel gets sd 1 (it carries nothing to scale)."""
    valid = np.arange(x.shape[1])[None, :] < np.asarray(lengths)[:, None]  # (n L)
    v = np.asarray(x, np.float64)[valid]  # (steps, d)
    mu, sd = v.mean(0), v.std(0)
    return mu, np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mu)), sd, 1.0)


@torch.no_grad()
def fold_standardisation(model: S4DModel, mu: np.ndarray, sd: np.ndarray) -> None:
    """Fold ``u -> (u - mu) / sd`` into the encoder in place, so that the model reads the raw
    inputs: W' = W diag(1 / sd), b' = b - W (mu / sd). The integer datapath then quantizes the raw
    inputs as for any model (:mod:`intssm.datapath.inputq`); nothing of the standardisation remains."""
    enc = model.encoder
    W = enc.weight.detach().to(torch.float64)
    mu_t, sd_t = torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(sd, dtype=torch.float64)
    b = enc.bias.detach().to(torch.float64) - W @ (mu_t / sd_t)
    enc.weight.copy_((W / sd_t[None, :]).to(enc.weight.dtype))
    enc.bias.copy_(b.to(enc.bias.dtype))


def lr_factor(step: int, total: int, warmup: int) -> float:
    """The schedule of every step-budgeted run: linear warm-up over ``warmup`` steps to 1, then
    cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


@dataclass
class StepArgs:
    steps: int = 1000  # optimizer steps of the schedule (warm-up + cosine to 0 at this step)
    batch_size: int = 32
    lr: float = 1e-2  # encoder, mixing, decoder, C, D
    ssm_lr: float = 1e-3  # dt, A, B (no weight decay)
    weight_decay: float = 0.01
    warmup: float = 0.05  # share of the steps spent warming up
    eval_every: int = 50  # validation every this many steps
    patience: int = 10  # early stop after this many evaluations without a better validation score
    stop_at: int | None = None  # end here (a step of the schedule) instead of at ``steps``
    seconds: float = 0.0  # wall-clock limit of the run (0 = none); the schedule is not shortened
    seed: int = 0


def train_steps(model: S4DModel, x: np.ndarray, y: np.ndarray, lengths: np.ndarray, args: StepArgs,
                val: tuple | None = None, on_eval=None):
    """Train ``model`` in place on standardised float sequences ``x`` (n, L, d) for a budget of
    optimizer steps; returns (kept state_dict, curve, why it ended).

    Batches walk seeded permutations of the sequences. With ``val`` = (x, y, lengths) the model is
    scored every ``eval_every`` steps (``curve``: step, val_acc, val_loss) and the best-scoring
    weights (accuracy, then loss) are kept; ``patience`` evaluations without improvement end the
    run (early stopping). Without ``val`` the weights at the end are kept."""
    set_determinism(args.seed)
    t0 = time.time()
    opt = torch.optim.AdamW(model.param_groups(args.lr, args.ssm_lr, args.weight_decay))
    base = [g["lr"] for g in opt.param_groups]
    gen = np.random.default_rng(args.seed)
    end = min(args.steps, args.stop_at or args.steps)
    warm = max(1, int(args.warmup * args.steps))
    order, pos = gen.permutation(len(y)), 0
    best, best_key, curve, since, why = None, None, [], 0, "steps"
    for step in range(end):
        if pos + args.batch_size > len(order):
            order, pos = np.concatenate([order[pos:], gen.permutation(len(y))]), 0
        idx = np.sort(order[pos : pos + args.batch_size])
        pos += args.batch_size
        f = lr_factor(step, args.steps, warm)
        for g, lr0 in zip(opt.param_groups, base):
            g["lr"] = lr0 * f
        model.train()
        loss = F.cross_entropy(model(torch.from_numpy(x[idx]), lengths=torch.from_numpy(lengths[idx])), torch.from_numpy(y[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.project()
        done = step + 1
        out_of_time = args.seconds and time.time() - t0 > args.seconds
        if val is not None and (done % args.eval_every == 0 or done == end or out_of_time):
            acc, vloss = evaluate(model, *val[:2], lengths=val[2])
            curve.append({"step": done, "val_acc": acc, "val_loss": vloss})
            if on_eval:
                on_eval(curve[-1])
            key = (acc, -vloss)
            if best_key is None or key > best_key:
                best, best_key, since = _copy(model.state_dict()), key, 0
            else:
                since += 1
                if since >= args.patience:
                    why = "early stop"
                    break
        if out_of_time:
            why = "time"
            break
    if val is None:
        best = _copy(model.state_dict())
        curve.append({"step": done, "train_loss": float(loss.item())})
    return best, curve, why
