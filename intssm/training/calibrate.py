"""Calibration: the float model run recurrently in float64, recording every datapath tensor's range.

The ranges (and, for range policies, samples; for state equalization, per-mode state ranges) are
what :mod:`intssm.training.ptq` turns into a datapath (:func:`intssm.datapath.build.build_datapath`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from intssm.training.model import S4DModel

T64 = torch.float64
SAMPLE_ROWS = 1 << 17  # about this many calibration samples per activation tensor (range policies)


@dataclass
class Calibration:
    """What :func:`calibrate` measured: ``ranges[key] = (lo, hi)`` per channel (numpy float64);
    ``samples[key]`` (n, C) float32 values, or None; ``modes``: per layer (H, N/2) largest |x| of
    each mode, or None."""

    ranges: dict
    samples: dict | None = None
    modes: list | None = None


def discrete_parts(ssm) -> dict:
    """Abar, Bbar, C, D of one S4D layer in float64 (:meth:`intssm.training.model.S4D.discrete`, zero-order
    hold), as real/imaginary parts: what the datapath quantizes."""
    Abar, Bbar, C, D = ssm.discrete(T64)
    return {"A_re": Abar.real, "A_im": Abar.imag, "B_re": Bbar.real, "B_im": Bbar.imag,
            "C_re": C.real, "C_im": C.imag, "D": D}


def _rows(t: torch.Tensor):
    """Per-row (first axis) min and max as numpy arrays."""
    f = t.detach().reshape(t.shape[0], -1)
    return f.min(1).values.numpy().astype(np.float64), f.max(1).values.numpy().astype(np.float64)


@torch.no_grad()
def calibrate(model: S4DModel, u: torch.Tensor, want_samples: bool = False, want_modes: bool = False,
              lengths=None) -> Calibration:
    """Per-channel (lo, hi) of every tensor of the datapath, from the float model run recurrently.

    ``u`` (B, L, d_input) float inputs (``p / 255``), ``lengths`` (B,) each sequence's valid steps
    (None: all L); padding steps never enter a range. Weights' ranges come from the weights.
    ``want_samples``: also keep ``samples[key]`` (n, C) float32 values per channel for the range
    policies of :func:`intssm.datapath.ranges.apply_range_policies`: every weight, and for activations every
    ``stride``-th time step, ``stride`` chosen to keep about SAMPLE_ROWS rows. ``want_modes``: also
    keep one (H, N/2) tensor per layer, each mode's largest |Re x_n| or |Im x_n| (what
    :mod:`intssm.training.equalize` evens out).
    """
    samples = {} if want_samples else None
    modes = [] if want_modes else None
    model = copy.deepcopy(model).double().eval()
    u = u.to(T64)
    Bsz, L, _ = u.shape
    cfg = model.cfg
    R: dict = {}

    def upd(key, lo, hi):
        if key in R:
            R[key] = (np.minimum(R[key][0], lo), np.maximum(R[key][1], hi))
        else:
            R[key] = (lo, hi)

    acts: dict = {}
    lens = torch.full((Bsz,), L, dtype=torch.long) if lengths is None else torch.as_tensor(lengths).long()
    valid = None  # rows of the batch still inside their sequence at the current step

    def upd_ch(key, t, k=0, rows=True):  # t (B, ..., C): channels last; k = time step
        if rows and valid is not None:
            t = t[valid]
        f = t.reshape(-1, t.shape[-1])
        upd(key, f.min(0).values.numpy(), f.max(0).values.numpy())
        if samples is not None and k % max(1, math.ceil(f.shape[0] * L / SAMPLE_ROWS)) == 0:
            acts.setdefault(key, []).append(f.numpy().astype(np.float32))

    def weight(key, t):  # weight tensor with channels first: its per-row range (and samples)
        R[key] = _rows(t)
        if samples is not None:
            samples[key] = t.detach().reshape(t.shape[0], -1).T.numpy().astype(np.float32)

    weight("enc_w", model.encoder.weight)
    discs = []
    for i, layer in enumerate(model.layers):
        d = discrete_parts(layer.ssm)
        discs.append(d)
        p = f"l{i}."
        weight(p + "A_re", d["A_re"])
        weight(p + "A_im", d["A_im"])
        weight(p + "B", torch.stack([d["B_re"], d["B_im"]], -1))
        weight(p + "C", torch.stack([d["C_re"], d["C_im"]], -1))
        weight(p + "D", d["D"][:, None])
        weight(p + "mix_w", layer.mix.weight)
    weight("dec_w", model.decoder.weight)
    xs = [torch.zeros(Bsz, cfg.d_model, cfg.d_state // 2, dtype=torch.complex128) for _ in model.layers]
    if modes is not None:
        modes[:] = [None] * len(xs)
    Abars = [torch.complex(d["A_re"], d["A_im"]) for d in discs]
    Bbars = [torch.complex(d["B_re"], d["B_im"]) for d in discs]
    Cs = [torch.complex(d["C_re"], d["C_im"]) for d in discs]
    acc = torch.zeros(Bsz, cfg.d_model, dtype=T64)
    for k in range(L):
        valid = k < lens
        if not bool(valid.any()):
            break
        h = model.encoder(u[:, k])
        upd_ch("h0", h, k)
        for i, layer in enumerate(model.layers):
            p = f"l{i}."
            xs[i] = Abars[i] * xs[i] + Bbars[i] * h[..., None]
            x = xs[i].permute(0, 2, 1)  # (B N2 H): channel last
            upd_ch(p + "x_re", x.real, k)
            upd_ch(p + "x_im", x.imag, k)
            if modes is not None:
                r = torch.maximum(xs[i].real.abs(), xs[i].imag.abs())[valid].amax(0)
                modes[i] = r if k == 0 else torch.maximum(modes[i], r)
            y = 2 * torch.einsum("hn,bhn->bh", Cs[i], xs[i]).real + discs[i]["D"] * h
            upd_ch(p + "y", y, k)
            a = F.gelu(y)
            upd_ch(p + "act", a, k)
            z = layer.mix(a)
            upd_ch(p + "glu", z, k)
            h = h + F.glu(z, dim=-1)
            upd_ch(p + "h", h, k)
        if cfg.pool == "mean":
            acc = acc + h * valid[:, None]
        else:
            acc = torch.where((k == lens - 1)[:, None], h, acc)
    valid = None
    pooled = acc / lens[:, None] if cfg.pool == "mean" else acc
    upd_ch("pool", pooled)
    upd_ch("logits", model.decoder(pooled))
    if samples is not None:
        samples.update({key: np.concatenate(v) for key, v in acts.items()})
    return Calibration(R, samples, modes)
