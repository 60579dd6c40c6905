"""Where one fused QAT training step spends its time: torch.profiler over a few steps, by operator.

    python tools/profile_qat.py [--preset paper-small] [--d-model H] [--n-layers N] [--batch-size 64] [--steps 2] [--threads T]

The fused kernels appear as ``QuantScan`` / ``QuantScanBackward`` (the state scan, intssm.scan)
and ``LayerTail`` / ``LayerTailBackward`` (each layer's pointwise steps, intssm.pointwise); the
rest are Torch operators (encoder, weight codes, pooling, decoder, optimizer). Times are per
step (self CPU time divided by the number of steps), under the profiler's own overhead.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper-small")
    ap.add_argument("--d-model", type=int, default=0)
    ap.add_argument("--n-layers", type=int, default=0)
    ap.add_argument("--config", default="paper-hetero")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="threads for Torch and Numba alike (0: all cores)")
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()
    import numba
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from intssm import data
    from intssm.model import PRESETS, S4DModel
    from intssm.qat import configure
    from intssm.qmodel import ptq
    from intssm.qspec import PRESETS as QP

    threads = a.threads or numba.config.NUMBA_NUM_THREADS
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    mcfg = replace(PRESETS[a.preset], **({"d_model": a.d_model} if a.d_model else {}),
                   **({"n_layers": a.n_layers} if a.n_layers else {}))
    B = a.batch_size
    tr = data.load("smnist", "train", B * (a.steps + 1))
    x, y = torch.from_numpy(tr.x), torch.from_numpy(tr.y)
    qm, _ = ptq(S4DModel(mcfg, seed=0).double(), QP[a.config], torch.from_numpy(tr.as_float()[:B]).double())
    opt = torch.optim.Adam(configure(qm, "continuous"), 1e-4)

    def step(i):
        lg, _ = qm(x[i * B:(i + 1) * B], ste=True)
        loss = F.cross_entropy(qm.real_logits(lg), y[i * B:(i + 1) * B])
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0)  # warm-up: JIT, allocator
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(1, a.steps + 1):
            step(i)
    ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ev) / a.steps / 1e3
    print(f"{a.preset} (d_model {mcfg.d_model}, {mcfg.n_layers} layer(s)) / {a.config}, batch {B}, {threads} threads: "
          f"{total:.1f} ms per step under the profiler")
    for e in ev[:a.top]:
        ms = e.self_cpu_time_total / a.steps / 1e3
        print(f"  {e.key:32s} {ms:8.1f} ms  {100 * ms / total:5.1f}%")


if __name__ == "__main__":
    main()
