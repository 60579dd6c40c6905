"""Benchmark the integer simulator against the machine's integer roofline, side by side in one run.

    python tools/bench_sim.py [--model data/checkpoints/paper-small-w8a8.pt] [--n 10000] [--isa avx2] [--json]

Prints: multiplications per second of the simulator (the datapath's exact multiplication count
per step from intssm.integer.cost, times steps simulated), next to a dense int16 x int16 -> int32 Numba
mat-vec measured in the same process (the roofline), as a fraction; steps/s; the time of the
full test set with a warm JIT cache; the reference kernel's time on a subset for the speed-up;
and the cold start (a new process running ``intssm simulate --limit 100 --verify 0``, after one
such run has filled Numba's JIT cache and the integer-model cache, intssm.sources). The first
line says which vector ISA the host has and which one Numba generated code for (``--isa avx2``
forces AVX2 code on an AVX-512 machine, tools/isa.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isa import describe, force_from_argv, line  # noqa: E402  (tools/isa.py)

ISA = force_from_argv()  # before Numba is imported

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from intssm.outputs import atomic  # noqa: E402


@njit(parallel=True, cache=True)
def _matvec_i16(W, x, y, reps):
    """y = W x repeated ``reps`` times inside one parallel region (int16 x int16 -> int32 MACs)."""
    for i in prange(W.shape[0]):
        tot = np.int32(0)
        for _ in range(reps):
            acc = np.int32(0)
            for j in range(W.shape[1]):
                acc += np.int32(W[i, j]) * np.int32(x[j])
            tot += acc
        y[i] = tot


def roofline_macs_per_s(n=1024, reps=50):
    """Best of 5: a dense int16 mat-vec (1024 x 1024, cache-resident), ``reps`` products per launch."""
    rng = np.random.default_rng(0)
    W = rng.integers(-128, 128, (n, n)).astype(np.int16)  # small values: no int32 overflow over reps
    x = rng.integers(-128, 128, n).astype(np.int16)
    y = np.zeros(n, np.int32)
    _matvec_i16(W, x, y, 1)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        _matvec_i16(W, x, y, reps)
        best = min(best, time.perf_counter() - t)
    return n * n * reps / best


def scaling(im, X, png):
    """Simulator time vs sequence length (expect linear) and per-sequence time vs batch size."""
    from intssm.integer.sim import simulate

    def t_of(P, reps=3):
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            simulate(im.model, P)
            best = min(best, time.perf_counter() - t)
        return best

    P = np.ascontiguousarray(X[:1000])
    length = [(L, t_of(np.ascontiguousarray(P[:, :L]))) for L in (98, 196, 392, 784)]
    batch = [(B, t_of(np.ascontiguousarray(X[:B])) / B) for B in (1, 2, 10, 100, 1000)]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot([x for x, _ in length], [y for _, y in length], "o-")
    a1.set_xlabel("sequence length (steps)")
    a1.set_ylabel("seconds for 1,000 sequences")
    a1.set_title("simulator time vs length")
    a2.loglog([x for x, _ in batch], [1e3 * y for _, y in batch], "o-")
    a2.set_xlabel("batch size")
    a2.set_ylabel("ms per sequence")
    a2.set_title("simulator time per sequence vs batch")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic(png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return {"length": length, "batch": batch}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "data/checkpoints/paper-small-w8a8.pt"))
    ap.add_argument("--n", type=int, default=10000, help="test sequences to simulate")
    ap.add_argument("--ref-n", type=int, default=500, help="sequences for the reference kernel")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--scaling", default=None, help="also time vs length and batch; write this PNG")
    ap.add_argument("--isa", default="native", choices=["native", "avx2"],
                    help="avx2: generate AVX2 code even on an AVX-512 machine (tools/isa.py)")
    a = ap.parse_args()
    isa = describe()

    from intssm import sources as integer
    from intssm.integer import cost
    from intssm import data
    from intssm.integer.sim import simulate

    im = integer.load(a.model)
    cfg, qcfg, L, _, input_bits = integer.describe(a.model)
    ds = data.load("smnist", "test", a.n)
    muls = sum(v for k, v in cost.step_ops(cfg, qcfg, L, input_bits).items() if k.startswith("mul"))
    simulate(im.model, ds.x[:2])  # warm
    simulate(im.model, ds.x[:2], reference=True)
    roof = roofline_macs_per_s()
    t = time.perf_counter()
    simulate(im.model, ds.x)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    simulate(im.model, ds.x[: a.ref_n], reference=True)
    t_ref = (time.perf_counter() - t) * len(ds) / a.ref_n
    # the same model with the dithered state rounding (docs/datapath.md, step 2): the same constants,
    # only the rounding offsets differ (refreshed every step), so the time ratio is the option's cost
    from dataclasses import replace

    from intssm.datapath import layout

    m = im.model
    dith = layout.validate(dict(m.arrays, x_dither=np.ones(1, np.int64)), m.cfg, replace(m.qcfg, state_rounding="dither"),
                           m.seq_len)
    simulate(dith, ds.x[:2])
    t = time.perf_counter()
    simulate(dith, ds.x)
    t_dither = time.perf_counter() - t
    roof2 = roofline_macs_per_s()
    roof = max(roof, roof2)
    steps = len(ds) * ds.x.shape[1]
    cold_cmd = [sys.executable, "-m", "intssm", "simulate", a.model, "--limit", "100", "--verify", "0", "--json"]
    subprocess.run(cold_cmd, check=True, capture_output=True, cwd=ROOT)  # fills the JIT and integer-model caches
    t = time.perf_counter()
    subprocess.run(cold_cmd, check=True, capture_output=True, cwd=ROOT)
    t_cold = time.perf_counter() - t
    res = {
        "n": len(ds), "steps": steps, "muls_per_step": muls,
        "sim_seconds": t_fast, "steps_per_s": steps / t_fast, "sim_muls_per_s": muls * steps / t_fast,
        "roofline_int16_macs_per_s": roof, "fraction_of_roofline": muls * steps / t_fast / roof,
        "reference_kernel_seconds_extrapolated": t_ref, "fast_over_reference": t_ref / t_fast,
        "cold_process_100_seqs_seconds": t_cold,
        "dithered_rounding_seconds": t_dither, "dithered_over_nearest": t_dither / t_fast,
        "isa": isa,
    }
    if a.scaling:
        res["scaling"] = scaling(im, ds.x, a.scaling)
    if a.json:
        print(json.dumps(res))
        return
    print(line(isa))
    print(f"model {a.model}: {muls} multiplications per step")
    print(f"int16 mat-vec roofline      : {roof / 1e9:8.2f} G MAC/s")
    print(f"simulator (fast kernel)     : {muls * steps / t_fast / 1e9:8.2f} G mul/s = {res['fraction_of_roofline']:.1%} of roofline")
    print(f"  {len(ds)} sequences x {ds.x.shape[1]} steps: {t_fast:.2f} s warm, {steps / t_fast:,.0f} steps/s")
    print(f"reference kernel (extrap.)  : {t_ref:.2f} s  -> fast kernel is {t_ref / t_fast:.1f}x faster")
    print(f"new process, 100 sequences  : {t_cold:.2f} s (JIT and integer-model caches on disk, no Torch import)")
    print(f"dithered state rounding     : {t_dither:.2f} s, {t_dither / t_fast:.2f}x the time of rounding half up")
    if a.scaling:
        sc = res["scaling"]
        print("time vs length (1,000 sequences): " + ", ".join(f"L={L}: {t:.3f} s" for L, t in sc["length"]))
        print("time per sequence vs batch (L=784): " + ", ".join(f"B={B}: {t * 1e3:.2f} ms" for B, t in sc["batch"]))
        print(f"plot: {a.scaling}")


if __name__ == "__main__":
    main()
