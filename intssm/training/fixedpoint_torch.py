"""Torch twins of the fixed-point primitives in :mod:`intssm.datapath.fixedpoint`, on float64 tensors.

The Torch quantized model (:mod:`intssm.training.qmodel`) holds integers as exactly-representable values
in float64 tensors; every accumulator is proved below 2**53 when the datapath is built, so each
twin gives the same integer as its Numba original. With ``ste`` a twin also carries the
straight-through gradient that QAT trains with.
"""

from __future__ import annotations

import torch

from intssm.datapath.fixedpoint import WEYL_LANE

def rounding_rshift_t(v: torch.Tensor, s: torch.Tensor, ste: bool = False) -> torch.Tensor:
    """Twin of :func:`~intssm.datapath.fixedpoint.rounding_rshift` on float64 tensors holding integers below 2**53.

    ``(v + 2**(s-1)) * 2**-s`` is exact in float64 (a power-of-two scaling of an exact integer),
    so ``floor`` gives the same integer as the arithmetic shift. With ``ste`` the gradient is that
    of ``v * 2**-s`` (straight-through rounding).
    """
    inv = torch.exp2(-s)
    half = torch.where(s > 0, torch.exp2(s - 1), torch.zeros_like(s))
    r = torch.floor((v + half) * inv)
    if ste:
        lin = v * inv
        return lin + (r - lin).detach()
    return r


def weyl_offset_t(phase: int, j: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Twin of :func:`~intssm.datapath.fixedpoint.weyl_offset` on float64 tensors: lanes ``j`` (integers), shifts ``s``.
    ``(phase + j WEYL_LANE mod 2**32) mod 2**32`` is below 2**33, exact in float64; scaling by
    2**(s-32) and ``floor`` is the shift."""
    w = torch.remainder(phase + torch.remainder(j * WEYL_LANE, 2.0**32), 2.0**32)
    return torch.floor(w * torch.exp2(s - 32))


def offset_rshift_t(v: torch.Tensor, d: torch.Tensor, s: torch.Tensor, ste: bool = False) -> torch.Tensor:
    """Twin of :func:`~intssm.datapath.fixedpoint.offset_rshift`; with ``ste`` the gradient is that of ``v * 2**-s``."""
    inv = torch.exp2(-s)
    r = torch.floor((v + d) * inv)
    if ste:
        lin = v * inv
        return lin + (r - lin).detach()
    return r


def clamp_t(v: torch.Tensor, lo, hi) -> torch.Tensor:
    """Twin of :func:`~intssm.datapath.fixedpoint.saturate` (value only); gradient passes where lo <= v <= hi, zero outside."""
    return torch.clamp(v, lo, hi)


class _RshiftClampSTE(torch.autograd.Function):
    """clamp(rounding_rshift(acc, S) + z, lo, hi) with gradient 2**-S where lo <= r + z <= hi, else 0."""

    @staticmethod
    def forward(ctx, acc, s, z, lo, hi):
        r = rounding_rshift_t(acc, s) + z
        keep = (r >= lo) & (r <= hi)
        ctx.save_for_backward(keep, torch.exp2(-s))
        return torch.clamp(r, lo, hi)

    @staticmethod
    def backward(ctx, g):
        keep, inv = ctx.saved_tensors
        return g * inv * keep, None, None, None, None


def rshift_clamp_t(acc: torch.Tensor, s: torch.Tensor, z, lo: float, hi: float, ste: bool = False) -> torch.Tensor:
    """clamp_t(rounding_rshift_t(acc, s, ste) + z, lo, hi): the same integers and, with ``ste``, the
    same gradient (2**-s straight through, zero where the result saturated), as one autograd node
    instead of a dozen: QAT spends much of its time in these element-wise ops."""
    if ste and acc.shape == torch.broadcast_shapes(acc.shape, s.shape, torch.as_tensor(z).shape):
        return _RshiftClampSTE.apply(acc, s, torch.as_tensor(z, dtype=acc.dtype), lo, hi)
    return clamp_t(rounding_rshift_t(acc, s, ste) + z, lo, hi)


def round_half_up_t(v: torch.Tensor, ste: bool = False) -> torch.Tensor:
    """Twin of :func:`~intssm.datapath.fixedpoint.round_half_up`; with ``ste`` the gradient passes straight through."""
    f = torch.floor(v)
    r = f + ((v - f) >= 0.5).to(v.dtype)
    return v + (r - v).detach() if ste else r
