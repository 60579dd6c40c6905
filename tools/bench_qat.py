"""QAT speed: one training step with the fused quantized scan vs the plain Torch loop vs float
convolution-mode training, measured side by side in one run and extrapolated to an sMNIST epoch.

    python tools/bench_qat.py [--preset paper-small] [--d-model H] [--n-layers N] [--batch-size 64] [--batches 3] [--threads T] [--json]

``--d-model 64 --n-layers 1`` is the performance issue's own reference model (one layer, d_model 64,
d_state 64, batch 64), for which it measured the plain loop at ~90x float training.

All three use the same cores: Torch's intra-op threads and Numba's threads are both set to
``--threads`` (default: every core Numba sees), so float training is not handicapped against the
parallel scan kernels.

The plain Torch loop keeps every step's tensors for autograd: for ``--preset base`` use
``--batch-size 16`` on a 24 GB machine (batch 64 needs more than 24 GB and is killed).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper-small")
    ap.add_argument("--d-model", type=int, default=0, help="override the preset's d_model")
    ap.add_argument("--n-layers", type=int, default=0, help="override the preset's number of layers")
    ap.add_argument("--config", default="paper-hetero")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="threads for Torch and Numba alike (0: all cores)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import numba
    import torch
    import torch.nn.functional as F

    threads = a.threads or numba.config.NUMBA_NUM_THREADS
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    from intssm import data
    from intssm.model import PRESETS, S4DModel
    from intssm.qat import configure
    from intssm.qmodel import ptq
    from intssm.qspec import PRESETS as QP

    mcfg = replace(PRESETS[a.preset], **({"d_model": a.d_model} if a.d_model else {}),
                   **({"n_layers": a.n_layers} if a.n_layers else {}))
    tr = data.load("smnist", "train", a.batch_size * (a.batches + 1))
    x, y = torch.from_numpy(tr.x), torch.from_numpy(tr.y)
    xf = torch.from_numpy(tr.as_float())
    B = a.batch_size
    fm = S4DModel(mcfg, seed=0)
    qm, _ = ptq(S4DModel(mcfg, seed=0).double(), QP[a.config], xf[:B].double())
    opt_q = torch.optim.Adam(configure(qm, "continuous"), 1e-4)
    opt_f = torch.optim.Adam(fm.parameters(), 1e-4)

    def q_step(i):
        lg, _ = qm(x[i * B:(i + 1) * B], ste=True)
        loss = F.cross_entropy(qm.real_logits(lg), y[i * B:(i + 1) * B])
        opt_q.zero_grad()
        loss.backward()
        opt_q.step()

    def q_forward(i):  # forward only, keeping the graph as training does
        lg, _ = qm(x[i * B:(i + 1) * B], ste=True)
        F.cross_entropy(qm.real_logits(lg), y[i * B:(i + 1) * B])

    def f_step(i):
        loss = F.cross_entropy(fm(xf[i * B:(i + 1) * B]), y[i * B:(i + 1) * B])
        opt_f.zero_grad()
        loss.backward()
        opt_f.step()

    def timed(fn, n):
        fn(0)  # warm-up (JIT, allocator)
        t = time.perf_counter()
        for i in range(1, n + 1):
            fn(i)
        return (time.perf_counter() - t) / n

    steps = 50000 / B
    qm.fused_scan = qm.fused_tail = True
    t_fused = timed(q_step, a.batches)
    t_float = timed(f_step, a.batches)
    qm.fused_scan = qm.fused_tail = False
    t_naive = timed(q_step, 1)
    t_naive_fwd = timed(q_forward, 1)
    res = {"d_model": mcfg.d_model, "n_layers": mcfg.n_layers, "batch_size": B, "threads": threads, "fused_s_per_step": t_fused, "naive_s_per_step": t_naive, "naive_forward_s": t_naive_fwd, "float_conv_s_per_step": t_float,
           "fused_epoch_s": t_fused * steps, "naive_epoch_s": t_naive * steps, "float_conv_epoch_s": t_float * steps,
           "naive_over_fused": t_naive / t_fused, "fused_over_float": t_fused / t_float}
    if a.json:
        print(json.dumps(res))
        return
    print(f"{a.preset} (d_model {mcfg.d_model}, {mcfg.n_layers} layer(s)) / {a.config}, batch {B}, {threads} threads (Torch and Numba), epoch = 50,000 sequences:")
    for k, lab in (("float_conv", "float, convolution mode"), ("fused", "QAT, fused quantized scan"), ("naive", "QAT, plain Torch loop")):
        print(f"  {lab:28s} {res[k + '_s_per_step']:7.3f} s/step -> {res[k + '_epoch_s'] / 60:7.1f} min/epoch")
    print(f"  plain loop, forward only      {t_naive_fwd:7.3f} s/batch")
    print(f"  fused is {res['naive_over_fused']:.1f}x faster than the plain loop and {res['fused_over_float']:.1f}x slower than float training")


if __name__ == "__main__":
    main()
