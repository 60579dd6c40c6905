"""Float training in convolution mode: AdamW, cosine schedule, best-on-validation kept."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import data
from .model import S4DModel


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


def train(model: S4DModel, seq: str, args: TrainArgs, on_step=None, on_epoch=None):
    """Train ``model`` in place; returns (best state_dict, history list of per-epoch dicts)."""
    set_determinism(args.seed, args.threads)
    dev = torch.device(args.device)
    model.to(dev)
    t_start = time.time()
    tr = data.load(seq, "train", args.limit, args.val_fraction)
    va = data.load(seq, "val", args.limit, args.val_fraction)
    xtr, ytr, ltr = tr.as_float(), tr.y, tr.lengths
    xva, yva = va.as_float(), va.y
    tr.check_labels(model.cfg.d_output)
    opt = torch.optim.AdamW(model.param_groups(args.lr, args.ssm_lr, args.weight_decay))
    steps_per_epoch = math.ceil(len(ytr) / args.batch_size)
    total = args.epochs * steps_per_epoch
    warm = int(args.warmup_epochs * steps_per_epoch)
    base_lrs = [g["lr"] for g in opt.param_groups]
    gen = np.random.default_rng(args.seed)
    best, best_acc, history, step = None, -1.0, [], 0
    for epoch in range(args.epochs):
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
        val_acc, val_loss = evaluate(model, xva, yva, lengths=va.lengths)
        rec = {
            "epoch": epoch + 1,
            "train_loss": run_loss / seen,
            "train_acc": run_correct / seen,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "seconds": time.time() - t0,
        }
        history.append(rec)
        if len(yva) == 0:  # no validation split (val_fraction 0): the last epoch is kept
            rec["val_acc"] = rec["val_loss"] = None
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif val_acc > best_acc:
            best_acc = val_acc
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        stop = args.max_minutes and time.time() - t_start + rec["seconds"] > 60 * args.max_minutes and epoch + 1 < args.epochs
        if stop:
            rec["stopped"] = f"time budget of {args.max_minutes} min"
        if on_epoch:
            on_epoch(rec)
        if stop:
            break
    model.to("cpu")
    best = {k: v.cpu() for k, v in best.items()}
    return best, history


def args_dict(args: TrainArgs) -> dict:
    return asdict(args)
