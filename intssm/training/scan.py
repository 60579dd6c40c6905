"""Fused quantized complex diagonal scan: a ``torch.autograd.Function`` backed by Numba kernels.

Forward, per layer, channel h, mode n, step k (centred codes, docs/datapath.md step 2)::

    vr_k = (KR0 xr_{k-1} - KR1 xi_{k-1} + KR2 u_k + dr) >> Sr     KR = (Are' M0, Aim' M1, Bre' M2)
    vi_k = (KI0 xi_{k-1} + KI1 xr_{k-1} + KI2 u_k + di) >> Si     KI = (Are' M0', Aim' M1', Bim' M2')
    xr_k = clamp(vr_k, lor, hir),  xi_k = clamp(vi_k, loi, hii)           the per-step state clip
    t1_k = sum_n Cre' xr_k,  t2_k = sum_n Cim' xi_k

with rounding offsets d = 2**(S-1) (half up), or the dithered rounding's Weyl offsets
(:func:`intssm.datapath.fixedpoint.weyl_offset`, which change with k and n).

The forward computes exactly the integers of :meth:`intssm.training.qmodel.QuantS4D._scan` (int64
inside; inputs and outputs are float64 tensors holding integers below 2**53). The backward is the
reverse scan with straight-through rounding (d v / d acc = 2**-S) and the clip masks (zero
gradient where the state was clipped), giving gradients for KR, KI, Cre', Cim' and u.
Channels are independent, so both kernels run ``prange`` over channels: each thread writes only
its own channel's gradients and the results do not depend on the thread count.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from numba import njit, prange

from intssm.datapath.fixedpoint import WEYL_MASK, WEYL_STEP, cast_like, wadd, weyl_lane_of, wmul, wsub
from intssm.integer.kernels import fill_state_offsets, max_offsets, mode_loop_fits_int32, numba_setup, state_update


@njit(cache=True, parallel=True)
def _scan_fwd(u, KR, KI, Cr, Ci, Sr, Si, lor, hir, loi, hii, smin, smax, t1, t2, vr_all, vi_all, nsat, jr0, ji0, dither):
    """u (B L H) integers (in float64); K* (3 H N2); C* (H N2); S*, lo*, hi* (H). Writes t1, t2 (B L H), each
    step's state before the clip, saturated to [smin, smax], the range of the store's type (H B L N2:
    each channel's thread streams through its own block), and per-channel clip counts nsat (2, H).

    The store's type is chosen so that every clip bound lies strictly inside its range
    (:func:`_store_type`): then the clipped state ``clamp(v, lo, hi)`` and the clip mask
    ``lo <= v <= hi`` are the same whether ``v`` was saturated or not, and the backward derives
    both from the one stored value.

    The rounding shift is ``(acc + 2**(S-1)) >> S`` (``rounding_rshift``: half up; the constant
    is 0 for S = 0), or with ``dither`` ``(acc + weyl_offset(k WEYL_STEP, j, S)) >> S`` for the
    lanes j = jr0[h] + n (Re) and ji0[h] + n (Im). The mode loop is branch-free (min/max, counted comparisons) and touches only
    small per-channel buffers; a second loop copies the values out. Both vectorise (storing
    into the large arrays inside the mode loop made it about 5x slower).
    """
    B, L, H = u.shape
    N2 = KR.shape[2]
    for h in prange(H):
        kr0, kr1, kr2 = KR[0, h], KR[1, h], KR[2, h]
        ki0, ki1, ki2 = KI[0, h], KI[1, h], KI[2, h]
        cr, ci = Cr[h], Ci[h]
        sr, si = cast_like(Sr[h], KR), cast_like(Si[h], KR)
        offr = np.empty(N2, KR.dtype)  # rounding offsets: 2**(S-1) (0 for S = 0), or the dither's
        offi = np.empty(N2, KR.dtype)
        lr, hr = cast_like(lor[h], KR), cast_like(hir[h], KR)
        li, hi = cast_like(loi[h], KR), cast_like(hii[h], KR)
        s_lo, s_hi = cast_like(smin, KR), cast_like(smax, KR)
        cr_ = np.int64(0)
        ci_ = np.int64(0)
        xr = np.zeros(N2, KR.dtype)
        xi = np.zeros(N2, KR.dtype)
        pr = np.zeros(N2, vr_all.dtype)
        pi = np.zeros(N2, vr_all.dtype)
        one = cast_like(1, KR)
        for b in range(B):
            xr[:] = 0
            xi[:] = 0
            phase = np.int64(0)
            for k in range(L):
                if dither or (b == 0 and k == 0):
                    fill_state_offsets(offr, dither, phase, jr0[h], Sr[h])
                    fill_state_offsets(offi, dither, phase, ji0[h], Si[h])
                phase = (phase + WEYL_STEP) & WEYL_MASK
                uk = cast_like(np.int64(u[b, k, h]), KR)
                s1 = cast_like(0, KR)
                s2 = cast_like(0, KR)
                c1 = cast_like(0, KR)
                c2 = cast_like(0, KR)
                for n in range(N2):
                    r0 = xr[n]
                    i0 = xi[n]
                    vr, vi = state_update(kr0[n], kr1[n], kr2[n], ki0[n], ki1[n], ki2[n], r0, i0, uk, offr[n], offi[n], sr, si)
                    c1 = wadd(c1, wsub(one, cast_like((vr >= lr) & (vr <= hr), KR)))
                    c2 = wadd(c2, wsub(one, cast_like((vi >= li) & (vi <= hi), KR)))
                    pr[n] = cast_like(min(max(vr, s_lo), s_hi), pr)
                    pi[n] = cast_like(min(max(vi, s_lo), s_hi), pi)
                    vr = min(max(vr, lr), hr)
                    vi = min(max(vi, li), hi)
                    xr[n] = vr
                    xi[n] = vi
                    s1 = wadd(s1, wmul(cr[n], vr))
                    s2 = wadd(s2, wmul(ci[n], vi))
                cr_ += np.int64(c1)
                ci_ += np.int64(c2)
                t1[b, k, h] = s1
                t2[b, k, h] = s2
                vo_r = vr_all[h, b, k]
                vo_i = vi_all[h, b, k]
                for n in range(N2):
                    vo_r[n] = pr[n]
                    vo_i[n] = pi[n]
        nsat[0, h] = cr_
        nsat[1, h] = ci_


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract", "nsz"})
def _scan_bwd(u, KR, KI, Cr, Ci, Sr, Si, lor, hir, loi, hii, vr_all, vi_all, g1, g2, gKR, gKI, gCr, gCi, gu):
    """Reverse scan. g1, g2 (B L H) = dLoss/dt1, dLoss/dt2; pre-clip states v (H B L N2) as
    stored by :func:`_scan_fwd`, from which x = clamp(v, lo, hi) and the clip mask
    m = (lo <= v <= hi). Writes gradients (float64). With d_r = (g_r + g1_k Cre') m_r 2**-Sr
    (straight-through rounding) and likewise d_i:  dKR += d_r (xr_{k-1}, -xi_{k-1}, u_k),
    dKI += d_i (xi_{k-1}, xr_{k-1}, u_k),  du_k = sum_n d_r KR2 + d_i KI2,
    g_r <- d_r KR0 + d_i KI1,  g_i <- -d_r KR1 + d_i KI0.

    Per channel, every constant and accumulator is its own small local array, so the mode loop
    vectorises (it needs more run-time overlap checks than LLVM allows by default: see
    :func:`intssm.datapath.fixedpoint.allow_overlap_checks`); floating-point sums may be reassociated
    (gradients, not codes).
    """
    B, L, H = u.shape
    N2 = KR.shape[2]
    for h in prange(H):
        fr = 2.0 ** (-Sr[h])
        fi = 2.0 ** (-Si[h])
        lr, hr, li, hi = lor[h], hir[h], loi[h], hii[h]
        kr0, kr1, kr2 = KR[0, h].astype(np.float64), KR[1, h].astype(np.float64), KR[2, h].astype(np.float64)
        ki0, ki1, ki2 = KI[0, h].astype(np.float64), KI[1, h].astype(np.float64), KI[2, h].astype(np.float64)
        cr, ci = Cr[h].astype(np.float64), Ci[h].astype(np.float64)
        dkr0, dkr1, dkr2 = np.zeros(N2), np.zeros(N2), np.zeros(N2)
        dki0, dki1, dki2 = np.zeros(N2), np.zeros(N2), np.zeros(N2)
        dcr, dci = np.zeros(N2), np.zeros(N2)
        gr, gi = np.zeros(N2), np.zeros(N2)  # dLoss/dx_{k} carried backwards through the recurrence
        zero = np.zeros(N2, vr_all.dtype)  # x_{-1} = 0 (0 lies inside every clip range)
        for b in range(B):
            gr[:] = 0.0
            gi[:] = 0.0
            for k in range(L - 1, -1, -1):
                uk = float(u[b, k, h])
                g1k = g1[b, k, h]
                g2k = g2[b, k, h]
                vr_k, vi_k = vr_all[h, b, k], vi_all[h, b, k]
                vr_p = vr_all[h, b, k - 1] if k > 0 else zero
                vi_p = vi_all[h, b, k - 1] if k > 0 else zero
                su = 0.0
                for n in range(N2):
                    p_r = float(min(max(vr_p[n], lr), hr))
                    p_i = float(min(max(vi_p[n], li), hi))
                    wr = vr_k[n]
                    wi = vi_k[n]
                    x_r = float(min(max(wr, lr), hr))
                    x_i = float(min(max(wi, li), hi))
                    m_r = fr if (wr >= lr) & (wr <= hr) else 0.0
                    m_i = fi if (wi >= li) & (wi <= hi) else 0.0
                    dr = (gr[n] + g1k * cr[n]) * m_r
                    di = (gi[n] + g2k * ci[n]) * m_i
                    dkr0[n] += dr * p_r
                    dkr1[n] -= dr * p_i
                    dkr2[n] += dr * uk
                    dki0[n] += di * p_i
                    dki1[n] += di * p_r
                    dki2[n] += di * uk
                    dcr[n] += g1k * x_r
                    dci[n] += g2k * x_i
                    gr[n] = dr * kr0[n] + di * ki1[n]
                    gi[n] = -dr * kr1[n] + di * ki0[n]
                    su += dr * kr2[n] + di * ki2[n]
                gu[b, k, h] = su
        for n in range(N2):
            gKR[0, h, n], gKR[1, h, n], gKR[2, h, n] = dkr0[n], dkr1[n], dkr2[n]
            gKI[0, h, n], gKI[1, h, n], gKI[2, h, n] = dki0[n], dki1[n], dki2[n]
            gCr[h, n] = dcr[n]
            gCi[h, n] = dci[n]


def _store_type(lor, hir, loi, hii):
    """The narrowest of int16 / int32 whose range holds every clip bound strictly inside it (so a
    value saturated to the type's range is clipped, and masked, exactly as the original)."""
    lo, hi = min(lor.min(), loi.min()), max(hir.max(), hii.max())
    return np.int16 if lo > -(1 << 15) and hi < (1 << 15) - 1 else np.int32


class _Buffers:
    """Recycles the large state/mask buffers: a forward takes them, its backward gives them back.

    Fresh ``np.empty`` arrays of this size (hundreds of MB per step) spend most of the forward's
    time in first-touch page faults; reusing them keeps the pages mapped. A forward whose
    backward never runs simply lets its buffers be garbage-collected.
    """

    def __init__(self):
        self.free: dict = {}
        self.lock = threading.Lock()

    def take(self, shape, dtype) -> np.ndarray:
        with self.lock:
            lst = self.free.get((shape, np.dtype(dtype)))
            if lst:
                return lst.pop()
        return np.empty(shape, dtype)

    def give(self, *arrays):
        with self.lock:
            for a in arrays:
                lst = self.free.setdefault((a.shape, a.dtype), [])
                if len(lst) < 8:  # bounded: at most a few layers' worth per shape
                    lst.append(a)


_BUFFERS = _Buffers()


def _fits_int32(u, KR, KI, Cr, Ci, Sr, Si, lor, hir, loi, hii, dither) -> bool:
    """:func:`intssm.integer.kernels.mode_loop_fits_int32` for this call, |u'| bounded by the batch's own max."""
    K = np.concatenate([KR, KI]).transpose(1, 0, 2)  # (H 6 N2)
    clip = np.stack([lor, hir, loi, hii, *max_offsets(Sr, Si, dither), Sr, Si], -1)  # (H 8)
    return mode_loop_fits_int32(K, np.stack([Cr, Ci], 1), clip, int(np.abs(u).max()) if u.size else 0)


def _i64(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy().astype(np.int64))


class QuantScan(torch.autograd.Function):
    """(u, KR, KI, Cr, Ci) -> (t1, t2); constants Sr, Si, lo/hi ranges as int64 numpy arrays."""

    @staticmethod
    def forward(ctx, u, KR, KI, Cr, Ci, consts):
        Sr, Si, lor, hir, loi, hii, nsat, jr0, ji0, dither = consts
        B, L, H = u.shape
        N2 = KR.shape[-1]
        ui = np.ascontiguousarray(u.detach().numpy(), dtype=np.float64)  # integers: read exactly by the kernels
        KRi, KIi, Cri, Cii = _i64(KR), _i64(KI), _i64(Cr), _i64(Ci)
        t1 = np.empty((B, L, H))  # the kernel's integer sums, stored exactly (|t| < 2**53)
        t2 = np.empty((B, L, H))
        shape, st = (H, B, L, N2), _store_type(lor, hir, loi, hii)
        vr = _BUFFERS.take(shape, st)
        vi = _BUFFERS.take(shape, st)
        Kf, Cf = (KRi, KIi), (Cri, Cii)
        if _fits_int32(ui, KRi, KIi, Cri, Cii, Sr, Si, lor, hir, loi, hii, dither):  # 8 int32 lanes, same integers
            Kf, Cf = (KRi.astype(np.int32), KIi.astype(np.int32)), (Cri.astype(np.int32), Cii.astype(np.int32))
        lim = np.iinfo(st)
        _scan_fwd(ui, *Kf, *Cf, Sr, Si, lor, hir, loi, hii, lim.min, lim.max, t1, t2, vr, vi, nsat, jr0, ji0, dither)
        ctx.saved = (ui, KRi, KIi, Cri, Cii, Sr, Si, lor, hir, loi, hii, vr, vi)
        return torch.from_numpy(t1), torch.from_numpy(t2)

    @staticmethod
    def backward(ctx, g1, g2):
        ui, KRi, KIi, Cri, Cii, Sr, Si, lor, hir, loi, hii, vr, vi = ctx.saved
        gKR = np.zeros(KRi.shape)
        gKI = np.zeros(KIi.shape)
        gCr = np.zeros(Cri.shape)
        gCi = np.zeros(Cii.shape)
        gu = np.empty(ui.shape)
        _scan_bwd(ui, KRi, KIi, Cri, Cii, Sr, Si, lor, hir, loi, hii, vr, vi,
                  np.ascontiguousarray(g1.numpy(), dtype=np.float64), np.ascontiguousarray(g2.numpy(), dtype=np.float64),
                  gKR, gKI, gCr, gCi, gu)
        ctx.saved = None
        _BUFFERS.give(vr, vi)
        t = torch.from_numpy
        return t(gu), t(gKR), t(gKI), t(gCr), t(gCi), None


def fused_scan(u, KR, KI, Cr, Ci, Sr, Si, lor, hir, loi, hii, dither_layer: int = -1):
    """(t1, t2, clips of x_re, clips of x_im) for u' (B L H); K* (3 H N2) tensors; S*, lo*, hi* (H).
    ``dither_layer`` >= 0: the state is rounded with the dither of that layer's lanes (else half up)."""
    numba_setup()
    H, N2 = u.shape[-1], KR.shape[-1]
    as64 = lambda a: np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype=np.int64).reshape(-1), (H,)))  # noqa: E731
    nsat = np.zeros((2, H), np.int64)
    i = max(dither_layer, 0)
    hs = np.arange(H, dtype=np.int64)
    jr0, ji0 = weyl_lane_of(i, 0, H, hs, N2, 0), weyl_lane_of(i, 1, H, hs, N2, 0)  # + n: the mode's lane
    consts = tuple(as64(a) for a in (Sr, Si, lor, hir, loi, hii)) + (nsat, jr0, ji0, dither_layer >= 0)
    t1, t2 = QuantScan.apply(u, KR, KI, Cr, Ci, consts)
    return t1, t2, int(nsat[0].sum()), int(nsat[1].sum())
