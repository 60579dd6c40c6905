"""Fused pointwise steps of a layer for QAT: a ``torch.autograd.Function`` over Numba kernels.

After the state scan (:mod:`intssm.training.scan`), every remaining step of a layer (docs/datapath.md
steps 3 to 7: output, GELU table, mixing, gate table, residual) is pointwise in time. In Torch
these are some fifty element-wise operations on (B, L, H) tensors, forward and backward, and
they cost QAT more than the scan itself. Here one kernel computes them row by row (one row =
one sequence at one time step), and one kernel computes their straight-through gradient:

    y  = requantize(M0 t1 - M1 t2 + M2 D' u', Sy)            u' = h - z_h,  pass mask m_y
    a' = LUT_gelu[y - qmin_y] - z_act
    g  = requantize((mix_b + mix_w' a') Mg, Sg)              pass mask m_g (2H channels)
    s  = LUT_sig[g[H:] - qmin_glu]
    h+ = requantize(M0h u' + M1h (g[:H] - z_glu) s, Sh)      pass mask m_h

``requantize(acc, S) = clamp(rounding_rshift(acc, S) + z, qmin, qmax)`` with the gradient
``2**-S`` where it did not saturate (:func:`intssm.training.fixedpoint_torch.rshift_clamp_t`), and each table's
gradient is ``f'(s_in (code - z_in)) s_in / s_out`` (:meth:`intssm.training.qmodel.QuantS4D._lut`), taken
per code from Torch's own autograd so that both paths multiply by the same numbers.

The forward gives exactly the integers of the Torch path (int64 inside, every accumulator below
2**53 by :func:`intssm.datapath.build.build_datapath`; the mixing sums in int32 lanes where
:func:`intssm.datapath.kernels.mixing_fits_int32` proves them in range). The backward matches autograd through the
Torch path to rounding (float64; tests). Weight gradients are summed per fixed block of rows
and the blocks in a fixed order, so results do not depend on the number of threads.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from intssm.datapath.fixedpoint import cast_like, requantize, rounding_rshift, saturate, wadd, wmul
from intssm.datapath.kernels import mixing_fits_int32, numba_setup, output_acc, residual_acc

_BLOCKS = 64  # row blocks of the backward's weight-gradient sums (fixed: thread-count independent)


@njit(cache=True, parallel=True)
def _tail_fwd(t1, t2, h, D, mw, mix_b, k, out, ys, gs, my, mg, mh):
    """Rows of t1, t2, h (R H) (float64 holding integers) -> out (R H) codes of h+. Saves y codes ys (R H),
    gate codes gs (R 2H) and pass masks my, mg, mh (1 = not saturated). ``k`` the layer's :class:`TailConsts`. Parallel over fixed blocks
    of rows, with one scratch buffer per block (no allocation per row)."""
    R, H = h.shape
    nb = min(R, _BLOCKS)
    for blk in prange(nb):
        a = np.empty(H, mw.dtype)  # centred GELU codes of the current row, at the mixing weights' width
        for r in range(blk * R // nb, (blk + 1) * R // nb):
            for c in range(H):
                u = np.int64(h[r, c]) - k.hz_in
                acc = output_acc(np.int64(t1[r, c]), np.int64(t2[r, c]), D[c] * u, k.yM[:, c])
                v, sat = saturate(rounding_rshift(acc, k.yS[c]) + k.yz, k.ylo, k.yhi)
                ys[r, c], my[r, c] = v, 1 - sat
                a[c] = cast_like(k.gelu[v - k.ylo] - k.az, mw)
            for j in range(2 * H):
                t = cast_like(0, mw)
                for c in range(H):
                    t = wadd(t, wmul(mw[j, c], a[c]))
                acc = mix_b[j] + np.int64(t)
                v, sat = requantize(acc, k.gM[j], k.gS[j], k.gz, k.glo, k.ghi)
                gs[r, j], mg[r, j] = v, 1 - sat
            for c in range(H):
                s = k.sig[gs[r, H + c] - k.glo]
                acc = residual_acc(np.int64(h[r, c]) - k.hz_in, np.int64(gs[r, c]) - k.gz, s, k.hM[0, c], k.hM[1, c])
                v, sat = saturate(rounding_rshift(acc, k.hS[c]) + k.hz_out, k.hlo, k.hhi)
                out[r, c], mh[r, c] = float(v), 1 - sat


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract", "nsz"})
def _tail_bwd(gout, h, D, mw, k, ys, gs, my, mg, mh, dt1, dt2, dh, dD, dmw, dmb):
    """Straight-through gradients. gout (R H) = dLoss/dh+; fy, fh (H) = 2**-S; gMf (2H) = Mg 2**-Sg.
    Writes dt1, dt2, dh (R H) and per-block sums dD (blocks H), dmw (blocks 2H H), dmb (blocks 2H)."""
    R, H = h.shape
    nb = dD.shape[0]
    mwf = mw.astype(np.float64)
    for blk in prange(nb):
        dg = np.empty(2 * H)
        da = np.empty(H)
        a = np.empty(H)
        dmw_b = np.zeros((2 * H, H))
        for r in range(blk * R // nb, (blk + 1) * R // nb):
            for c in range(H):  # residual: acc_h = M0h u' + M1h (g - z) s
                ec = gout[r, c] * (mh[r, c] * k.fh[c])
                gh = gs[r, H + c] - k.glo
                dh[r, c] = ec * k.hM[0, c]
                dg[c] = ec * k.hM[1, c] * k.sig[gh]
                dg[H + c] = ec * k.hM[1, c] * (gs[r, c] - k.gz) * k.sig_d[gh]
                a[c] = k.gelu[ys[r, c] - k.ylo] - k.az
                da[c] = 0.0
            for j in range(2 * H):  # mixing: acc_g = mix_b + mix_w' a'
                d = dg[j] * (mg[r, j] * k.gMf[j])
                dmb[blk, j] += d
                for c in range(H):
                    da[c] += d * mwf[j, c]
                    dmw_b[j, c] += d * a[c]
            for c in range(H):  # output: acc_y = M0 t1 - M1 t2 + M2 D' u'
                d = da[c] * k.gelu_d[ys[r, c] - k.ylo] * (my[r, c] * k.fy[c])
                dt1[r, c] = d * k.yM[0, c]
                dt2[r, c] = -d * k.yM[1, c]
                dh[r, c] += d * k.yM[2, c] * D[c]
                dD[blk, c] += d * k.yM[2, c] * (h[r, c] - k.hz_in)
        dmw[blk] = dmw_b


def lut_surrogate(code: torch.Tensor, fn, s_in: float, s_out: float, z_in) -> torch.Tensor:
    """fn(s_in (code - z_in)) / s_out: the smooth function a lookup table tabulates, whose
    gradient is the table's straight-through gradient (:meth:`intssm.training.qmodel.QuantS4D._lut`)."""
    return fn(s_in * (code - z_in)) / s_out


def lut_grad(lo: float, hi: float, fn, s_in: float, s_out: float, z_in: float) -> np.ndarray:
    """d/d code of :func:`lut_surrogate` for every code lo..hi, by Torch's autograd: the numbers
    the Torch path multiplies by."""
    code = torch.arange(lo, hi + 1, dtype=torch.float64, requires_grad=True)
    lut_surrogate(code, fn, s_in, s_out, z_in).sum().backward()
    return code.grad.numpy().copy()


def _i64(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy().reshape(-1, t.shape[-1]).astype(np.int64))


def _rows(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy().reshape(-1, t.shape[-1]), dtype=np.float64)


def _mixing_width(mw: np.ndarray, k) -> np.ndarray:
    """The centred mixing weights as int32 where the mixing sums provably fit int32
    (:func:`intssm.datapath.kernels.mixing_fits_int32`, a' = LUT_gelu - z_act over the whole table;
    the bias is added in int64), else int64. The same integers either way."""
    return mw.astype(np.int32) if mixing_fits_int32(mw, np.abs(k.gelu - k.az).max()) else mw


class LayerTail(torch.autograd.Function):
    """(t1, t2, h, D', mix_w', mix_b) -> h+ for one layer; ``k`` holds its integer constants."""

    @staticmethod
    def forward(ctx, t1, t2, h, D, mw, mix_b, k):
        shape = h.shape
        H = shape[-1]
        hf, Di, mwi, mbi = _rows(h), _i64(D[None]).reshape(-1), _i64(mw), _i64(mix_b[None]).reshape(-1)
        R = hf.shape[0]
        out = np.empty((R, H))
        ys = np.empty((R, H), np.int32)
        gs = np.empty((R, 2 * H), np.int32)
        my, mg, mh = np.empty((R, H), np.int8), np.empty((R, 2 * H), np.int8), np.empty((R, H), np.int8)
        _tail_fwd(_rows(t1), _rows(t2), hf, Di, _mixing_width(mwi, k), mbi, k, out, ys, gs, my, mg, mh)
        ctx.saved = (hf, Di, mwi, ys, gs, my, mg, mh, k, shape)
        return torch.from_numpy(out.reshape(shape))

    @staticmethod
    def backward(ctx, gout):
        hf, Di, mwi, ys, gs, my, mg, mh, k, shape = ctx.saved
        ctx.saved = None
        R, H = hf.shape
        nb = max(1, min(_BLOCKS, R))
        dt1, dt2, dh = np.empty((R, H)), np.empty((R, H)), np.empty((R, H))
        dD, dmw, dmb = np.zeros((nb, H)), np.zeros((nb, 2 * H, H)), np.zeros((nb, 2 * H))
        g = np.ascontiguousarray(gout.numpy().reshape(R, H), dtype=np.float64)
        _tail_bwd(g, hf, Di, mwi, k, ys, gs, my, mg, mh, dt1, dt2, dh, dD, dmw, dmb)
        t = lambda a: torch.from_numpy(a.reshape(shape))  # noqa: E731
        return t(dt1), t(dt2), t(dh), torch.from_numpy(dD.sum(0)), torch.from_numpy(dmw.sum(0)), torch.from_numpy(dmb.sum(0)), None


#: One layer's integer constants for the fused tail kernels (one bundle instead of positional lists):
#: the output site (yM, yS, yz, code range ylo..yhi), the GELU table and activation zero point, the
#: mixing site (gM, gS, gz, glo..ghi), the sigmoid table, the residual site (hM, hS, zero points in
#: and out, hlo..hhi), and for the backward pass 2**-S of the y and h sites, gM 2**-gS and the
#: tables' derivative tables.
TailConsts = namedtuple("TailConsts", ("yM", "yS", "yz", "ylo", "yhi", "gelu", "az", "gM", "gS", "gz", "glo", "ghi",
                                       "sig", "hM", "hS", "hz_in", "hz_out", "hlo", "hhi", "fy", "fh", "gMf",
                                       "gelu_d", "sig_d"))


def tail_constants(c: dict, i: int) -> TailConsts:
    """Layer ``i``'s integer constants (and the two gradient tables) from
    :func:`intssm.training.qmodel.datapath_tensors`, as the kernels take them."""
    n = lambda v: np.ascontiguousarray(np.asarray(v.numpy() if torch.is_tensor(v) else v, dtype=np.int64))  # noqa: E731
    qr = c["qrange"]
    ylo, yhi = qr["y"]
    glo, ghi = qr["glu"]
    k = {"yM": n(c["y_M"][i]), "yS": n(c["y_S"][i]), "yz": int(c["y_z"][i]), "ylo": int(ylo), "yhi": int(yhi),
         "gelu": n(c["gelu_lut"][i]), "az": int(c["act_z"][i]), "gM": n(c["glu_M"][i]), "gS": n(c["glu_S"][i]),
         "gz": int(c["glu_z"][i]), "glo": int(glo), "ghi": int(ghi), "sig": n(c["sig_lut"][i]),
         "hM": n(c["h_M"][i]), "hS": n(c["h_S"][i]), "hz_in": int(c["h_z"][i]), "hz_out": int(c["h_z"][i + 1]),
         "hlo": int(qr["h"][0]), "hhi": int(qr["h"][1])}
    k["fy"] = np.exp2(-k["yS"].astype(np.float64))
    k["fh"] = np.exp2(-k["hS"].astype(np.float64))
    k["gMf"] = k["gM"] * np.exp2(-k["gS"].astype(np.float64))
    k["gelu_d"] = lut_grad(ylo, yhi, F.gelu, c["y_s"][i], c["act_s"][i], float(c["y_z"][i]))
    k["sig_d"] = lut_grad(glo, ghi, torch.sigmoid, c["glu_s"][i], c["sig_s"][i], float(c["glu_z"][i]))
    return TailConsts(**k)


def layer_tail(t1, t2, h, D, mw, mix_b, k: TailConsts) -> torch.Tensor:
    """h+ (B, L, H) of one layer from the scan's sums t1, t2 and its input codes h (float64
    tensors holding integers); D' (H), mix_w' (2H, H), mix_b (2H) centred codes."""
    numba_setup()
    return LayerTail.apply(t1, t2, h, D, mw, mix_b, k)
