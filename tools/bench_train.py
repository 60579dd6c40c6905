"""Training speed of the float S4D: convolution mode vs a plain recurrent loop, side by side.

Run (from the repository root, venv active):

    python tools/bench_train.py                       # paper-small, 3 batches of 128 per mode, 2 threads
    python tools/bench_train.py --batches 2 --json    # one JSON object on stdout

A full recurrent epoch is far too slow to run, so each mode times ``--batches`` training steps
(forward + backward + AdamW step, exactly as ``intssm.training.train`` does them, on the first batches of a
fixed shuffle of the 50,000 sMNIST training sequences) and extrapolates to one epoch of
``ceil(50000 / batch_size)`` steps. Both modes start from the same initial weights, run the same
batches, and use the same thread count; one untimed warm-up step per mode (``--warmup``) keeps
one-time costs (allocator, FFT plans) out of the numbers. The first-step losses of the two modes
are printed as a sanity check: they compute the same function and must agree to float32 rounding.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from intssm import data
from intssm.datapath.inputq import model_input
from intssm.training.model import PRESETS, S4DModel, n_params


def time_mode(mode: str, cfg, seed: int, batches: list, warmup: int, lr: float, ssm_lr: float, wd: float):
    """(seconds per timed step list, loss of the first step) for ``mode`` = conv | recurrent."""
    model = S4DModel(cfg, seed=seed)
    model.train()
    opt = torch.optim.AdamW(model.param_groups(lr, ssm_lr, wd))
    times, first_loss = [], None
    for i, (u, t) in enumerate(batches):
        t0 = time.perf_counter()
        logits = model(u, mode=mode)
        loss = F.cross_entropy(logits, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if first_loss is None:
            first_loss = loss.item()
        if i >= warmup:
            times.append(dt)
    return times, first_loss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper-small", choices=sorted(PRESETS))
    ap.add_argument("--seq", default="smnist", help="smnist | psmnist | IDX directory | .npz (default smnist)")
    ap.add_argument("--batches", type=int, default=3, help="timed training steps per mode (default 3)")
    ap.add_argument("--batch-size", type=int, default=128, help="sequences per step (default 128)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per mode before timing (default 1)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args(argv)
    if args.batches < 1 or args.batch_size < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--batches, --batch-size and --threads must be >= 1, --warmup >= 0")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = PRESETS[args.preset]
    tr = data.load(args.seq, "train")
    n_train = len(tr)
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    n_steps = args.warmup + args.batches
    perm = np.random.default_rng(args.seed).permutation(n_train)
    batches = []
    for s in range(n_steps):
        idx = np.sort(perm[(s * args.batch_size) % n_train:][: args.batch_size])
        x = model_input(tr.x[idx]) if tr.is_uint8 else tr.x[idx].astype(np.float32)
        batches.append((torch.from_numpy(x), torch.from_numpy(tr.y[idx])))
    L = tr.x.shape[1]

    res = {}
    for mode in ("conv", "recurrent"):
        if not args.json:
            print(f"timing {mode}: {args.warmup} warm-up + {args.batches} steps of {args.batch_size} ...",
                  file=sys.stderr, flush=True)
        times, first_loss = time_mode(mode, cfg, args.seed, batches, args.warmup, 1e-2, 1e-3, 0.01)
        per_step = float(np.mean(times))
        res[mode] = {"s_per_step": per_step, "s_per_step_all": times, "s_per_epoch": per_step * steps_per_epoch,
                     "first_loss": first_loss}

    out = {
        "preset": args.preset,
        "n_params": n_params(S4DModel(cfg, seed=args.seed)),
        "seq": args.seq,
        "n_train": n_train,
        "seq_len": L,
        "batch_size": args.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "timed_steps": args.batches,
        "warmup_steps": args.warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "conv_s_per_epoch": res["conv"]["s_per_epoch"],
        "recurrent_s_per_epoch": res["recurrent"]["s_per_epoch"],
        "ratio_recurrent_over_conv": res["recurrent"]["s_per_epoch"] / res["conv"]["s_per_epoch"],
        "conv": res["conv"],
        "recurrent": res["recurrent"],
    }
    if args.json:
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        print(f"{args.preset} ({out['n_params']} params) on {args.seq}: {n_train} sequences of length {L}, "
              f"batch {args.batch_size} -> {steps_per_epoch} steps/epoch, {out['threads']} threads, "
              f"torch {torch.__version__}")
        for mode in ("conv", "recurrent"):
            r = res[mode]
            print(f"  {mode:9s}: {r['s_per_step']:8.3f} s/step (mean of {args.batches}) -> "
                  f"{r['s_per_epoch']:10.1f} s/epoch ({r['s_per_epoch'] / 3600:6.2f} h), first loss {r['first_loss']:.5f}")
        print(f"  recurrent / conv: {out['ratio_recurrent_over_conv']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
