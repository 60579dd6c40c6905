"""Which part of the low-bit recurrence breaks PTQ: the Abar grid, or the state's rounding dead zone?

    python tools/state_rounding.py [--ckpt data/checkpoints/paper-small-seed2-fp32.pt] [--n 1000] [--lfsr]

A float analysis, not the integer datapath: the float model runs in recurrent mode with only the
state x (real and imaginary parts, per-channel scales from 64 training sequences, clipped to the
signed b-bit range) quantized after every update, everything else float. Each width is run with
round-to-nearest (what the datapath does) and with stochastic rounding (floor(v + U[0,1)), seeded),
and again with Abar also quantized (per channel, symmetric, round-to-nearest). Prints validation
accuracy. With round-to-nearest a mode whose per-step change (1 - |Abar|) |x| is below half a step
never moves (the dead zone); stochastic rounding moves it by the right amount on average.
``--lfsr`` adds hardware-style deterministic dithers: a 32-bit LFSR (:func:`lfsr_dither`) giving
one offset per time step shared by every mode, or one per mode and step; and a stateless Weyl
sequence frac(k phi + lane sqrt 2) per mode (no generator state to store, only the step count).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=str(ROOT / "data/checkpoints/paper-small-seed2-fp32.pt"))
    ap.add_argument("--n", type=int, default=1000, help="validation sequences")
    ap.add_argument("--bits", default="12,10,8,7,6")
    ap.add_argument("--abar-bits", type=int, default=8, help="bits of Abar in the second table")
    ap.add_argument("--lfsr", action="store_true", help="also round with a deterministic LFSR dither (Abar float)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from intssm import data
    from intssm.training import checkpoint

    model, _ = checkpoint.load(a.ckpt)
    model = model.double()
    if model.cfg.n_layers != 1:
        sys.exit("error: this analysis handles one-layer models")
    va = data.load("smnist", "val", a.n)
    u_va = torch.from_numpy(va.as_float()).double()
    u_cal = torch.from_numpy(data.load("smnist", "train", 64).as_float()).double()
    layer = model.layers[0]
    Abar, Bbar, C, D = (t.detach() for t in layer.ssm.discrete())

    def run(u, A, q=None, stochastic=False):
        """Recurrent forward; q = (scale_re, scale_im, qmax) quantizes x every step, rounding
        ``stochastic`` = False (nearest), True (uniform random offsets) or an LFSR dither
        ("lfsr-step", "lfsr-mode": :func:`lfsr_dither`). Returns (logits, per-channel max |Re x|, max |Im x|)."""
        gen = torch.Generator().manual_seed(0)
        B, L, _ = u.shape
        H, N2 = A.shape
        if stochastic == "weyl-mode":  # stateless: frac(k phi + lane sqrt 2), lane = (part, h, n)
            lane = torch.arange(2 * H * N2, dtype=torch.float64).view(1, 2, H, N2)
            kk = torch.arange(L, dtype=torch.float64).view(L, 1, 1, 1)
            d = torch.remainder(kk * 0.6180339887498949 + lane * 0.41421356237309515, 1.0)
        elif isinstance(stochastic, str):
            per = 1 if stochastic == "lfsr-step" else H * N2
            d = torch.from_numpy(lfsr_dither(2 * L * per)).view(L, 2, *((1, 1) if per == 1 else (H, N2)))
        x = torch.zeros(B, H, N2, dtype=torch.complex128)
        mr = torch.zeros(H, 1, dtype=torch.float64)
        mi = torch.zeros_like(mr)
        acc = 0
        for k in range(L):
            h = model.encoder(u[:, k])
            x = A * x + Bbar * h[..., None]
            if q is None:
                mr = torch.maximum(mr, x.real.abs().amax(0).amax(-1, keepdim=True))
                mi = torch.maximum(mi, x.imag.abs().amax(0).amax(-1, keepdim=True))
            else:
                sr, si, qmax = q

                def quant(v, s, part):
                    t = v / s
                    if isinstance(stochastic, str):
                        off = d[k, part]
                    else:
                        off = torch.rand(t.shape, generator=gen, dtype=torch.float64) if stochastic else 0.5
                    return torch.clamp(torch.floor(t + off), -qmax - 1, qmax) * s

                x = torch.complex(quant(x.real, sr, 0), quant(x.imag, si, 1))
            y = 2 * torch.einsum("hn,bhn->bh", C, x).real + D * h
            h = h + layer.mixing(y)
            acc = acc + h
        return model.decoder(acc / L), mr, mi

    def acc_of(logits):
        return float((logits.argmax(1).numpy() == va.y).mean())

    def qa(v, bits):
        s = v.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
        return torch.round(v / s) * s

    with torch.no_grad():
        _, mr, mi = run(u_cal, Abar)
        Aq = torch.complex(qa(Abar.real, a.abar_bits), qa(Abar.imag, a.abar_bits))
        print(f"{a.ckpt}, {len(va)} validation sequences")
        print(f"float recurrent: {acc_of(run(u_va, Abar)[0]):.3f};  Abar {a.abar_bits}-bit, x float: "
              f"{acc_of(run(u_va, Aq)[0]):.3f}")
        print(f"{'x bits':>6}  {'Abar float: nearest':>20} {'stochastic':>10}  {f'Abar {a.abar_bits}-bit: nearest':>20} {'stochastic':>10}")
        for b in (int(t) for t in a.bits.split(",")):
            qmax = 2 ** (b - 1) - 1
            q = (mr / qmax, mi / qmax, qmax)
            r = [acc_of(run(u_va, A, q, s)[0]) for A in (Abar, Aq) for s in (False, True)]
            print(f"{b:>6}  {r[0]:>20.3f} {r[1]:>10.3f}  {r[2]:>20.3f} {r[3]:>10.3f}", flush=True)
        if a.lfsr:
            print(f"\ndeterministic dither, Abar float:\n{'x bits':>6}  {'LFSR, one per step':>18} "
                  f"{'LFSR, one per mode and step':>27} {'Weyl sequence per mode (stateless)':>34}")
            for b in (int(t) for t in a.bits.split(",")):
                qmax = 2 ** (b - 1) - 1
                q = (mr / qmax, mi / qmax, qmax)
                r = [acc_of(run(u_va, Abar, q, s)[0]) for s in ("lfsr-step", "lfsr-mode", "weyl-mode")]
                print(f"{b:>6}  {r[0]:>18.3f} {r[1]:>27.3f} {r[2]:>34.3f}", flush=True)


@functools.lru_cache(maxsize=4)
def lfsr_dither(n: int, seed: int = 1):
    """n dither offsets in [0, 1): the top 16 bits of a 32-bit Galois LFSR (feedback mask
    0x80200003, maximal length 2**32 - 1), stepped once per value, over 2**16. What a hardware
    datapath could add before its rounding shift instead of the constant 1/2, bit-exactly
    reproducible from the seed."""
    import numpy as np

    out = np.empty(n)
    s = seed
    for i in range(n):
        s = (s >> 1) ^ (0x80200003 if s & 1 else 0)
        out[i] = (s >> 16) / 65536.0
    return out



if __name__ == "__main__":
    main()
