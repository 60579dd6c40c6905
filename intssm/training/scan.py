"""Fused quantized complex diagonal scan: a ``torch.autograd.Function`` backed by Numba kernels.

Forward, per layer, channel h, mode n, step k (centred codes, docs/datapath.md step 2)::

    vr_k = (KR0 xr_{k-1} - KR1 xi_{k-1} + KR2 u_k + dr) >> Sr     KR = (Are' M0, Aim' M1, Bre' M2)
    vi_k = (KI0 xi_{k-1} + KI1 xr_{k-1} + KI2 u_k + di) >> Si     KI = (Are' M0', Aim' M1', Bim' M2')
    xr_k = clamp(vr_k, lor, hir),  xi_k = clamp(vi_k, loi, hii)           the per-step state clip
    t1_k = sum_n Cre' xr_k,  t2_k = sum_n Cim' xi_k

with rounding offsets d = 2**(S-1) (half up), or the dithered rounding's Weyl offsets
(:func:`intssm.datapath.fixedpoint.weyl_offset`, which change with k and n).

The forward computes exactly the integers of :meth:`intssm.training.qmodel.QuantS4D._scan` (int32
lanes where :func:`intssm.datapath.kernels.mode_loop_fits_int32` proves them safe for the call, int64
otherwise; inputs and outputs are float64 tensors holding integers below 2**53). The backward is the
reverse scan with straight-through rounding (d v / d acc = 2**-S) and the clip masks (zero
gradient where the state was clipped), giving gradients for KR, KI, Cre', Cim' and u.
Channels are independent, so both kernels run ``prange`` over chunks of channels, one per thread:
each thread writes only its own channels' sums and gradients, and the results do not depend on
the thread count.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
import torch
from numba import get_num_threads, njit, prange

from intssm.datapath.fixedpoint import WEYL_MASK, WEYL_STEP, cast_like, wadd, weyl_lane_of, wmul
from intssm.datapath.kernels import (clip_counted, fill_state_offsets, max_offsets, mode_loop_fits_int32, numba_setup,
                                   state_update)


class ScanConsts(NamedTuple):
    """The per-channel constants of one layer's scan, fixed while it runs: int64 arrays (H,) and the
    rounding switch. Numba takes the bundle whole and the kernels read its fields by name."""

    Sr: np.ndarray  # rounding shift of the x_re update
    Si: np.ndarray  # rounding shift of the x_im update
    lor: np.ndarray  # clip range of the centred x_re: [lor, hir]
    hir: np.ndarray
    loi: np.ndarray  # clip range of the centred x_im: [loi, hii]
    hii: np.ndarray
    jr0: np.ndarray  # dither lane of x_re's mode 0 (mode n: jr0 + n; fixedpoint.weyl_lane_of)
    ji0: np.ndarray  # dither lane of x_im's mode 0
    dither: bool  # dithered state rounding (else half up)


@njit(cache=True, parallel=True)
def _scan_fwd(u, KR, KI, Cr, Ci, c, smin, smax, t1, t2, vr_all, vi_all, nsat, nchunks):
    """u (B L H) integers (in float64); K* (3 H N2); C* (H N2); ``c`` the layer's :class:`ScanConsts`. Writes t1, t2
    (B L H, float64 holding the integer sums), each step's state before the clip, saturated to
    [smin, smax], the range of the store's type (H L N2 B), and per-channel clip counts nsat (2, H).

    The batch is the innermost loop: for one channel, step and mode every sequence of the batch
    takes the same constants and rounding offset (the dither's offset depends on the step and the
    mode's lane, never on the sequence), so the loop body is the same integer operations on B
    contiguous lanes at K's width, which LLVM vectorises (8 int32 lanes under AVX2). Each
    sequence's arithmetic, and the order of its sums over modes, is that of the reference scan.
    Channels are split into ``nchunks`` contiguous chunks, one per thread at a time; a chunk walks
    the steps once, moving each step's inputs and sums between the (B L H) tensors and its own
    lane-innermost buffers (no transposed copy of a whole tensor).

    The store's type is chosen so that every clip bound lies strictly inside its range
    (:func:`_store_type`): then the clipped state ``clamp(v, lo, hi)`` and the clip mask
    ``lo <= v <= hi`` are the same whether ``v`` was saturated or not, and the backward derives
    both from the one stored value.

    The rounding shift is ``(acc + 2**(S-1)) >> S`` (``rounding_rshift``: half up; the constant
    is 0 for S = 0), or with ``c.dither`` ``(acc + weyl_offset(k WEYL_STEP, j, S)) >> S`` for the
    lanes j = c.jr0[h] + n (Re) and c.ji0[h] + n (Im).
    """
    B, L, H = u.shape
    N2 = KR.shape[2]
    Sr, Si, lor, hir, loi, hii, jr0, ji0, dither = c.Sr, c.Si, c.lor, c.hir, c.loi, c.hii, c.jr0, c.ji0, c.dither
    for ch in prange(nchunks):
        h0, h1 = ch * H // nchunks, (ch + 1) * H // nchunks
        nh = h1 - h0
        offr = np.empty((nh, N2), KR.dtype)  # rounding offsets: 2**(S-1) (0 for S = 0), or the dither's
        offi = np.empty((nh, N2), KR.dtype)
        xr = np.zeros((nh, N2, B), KR.dtype)  # centred state of every sequence: x_{-1} = 0
        xi = np.zeros((nh, N2, B), KR.dtype)
        uc = np.empty((nh, B), KR.dtype)  # this step's inputs
        s1 = np.empty((nh, B), KR.dtype)  # sum_n Cre' xr, sum_n Cim' xi
        s2 = np.empty((nh, B), KR.dtype)
        cnt = np.zeros((2, nh), np.int64)
        phase = np.int64(0)
        for k in range(L):
            if dither or k == 0:
                for j in range(nh):
                    fill_state_offsets(offr[j], dither, phase, jr0[h0 + j], Sr[h0 + j])
                    fill_state_offsets(offi[j], dither, phase, ji0[h0 + j], Si[h0 + j])
            phase = (phase + WEYL_STEP) & WEYL_MASK
            for b in range(B):
                for j in range(nh):
                    uc[j, b] = cast_like(np.int64(u[b, k, h0 + j]), KR)
            for j in range(nh):
                h = h0 + j
                sr, si = cast_like(Sr[h], KR), cast_like(Si[h], KR)
                lr, hr = cast_like(lor[h], KR), cast_like(hir[h], KR)
                li, hi = cast_like(loi[h], KR), cast_like(hii[h], KR)
                s_lo, s_hi = cast_like(smin, KR), cast_like(smax, KR)
                uk = uc[j]
                a1 = s1[j]
                a2 = s2[j]
                a1[:] = 0
                a2[:] = 0
                for n in range(N2):
                    k0, k1, k2 = KR[0, h, n], KR[1, h, n], KR[2, h, n]
                    k3, k4, k5 = KI[0, h, n], KI[1, h, n], KI[2, h, n]
                    o_r, o_i = offr[j, n], offi[j, n]
                    c_r, c_i = Cr[h, n], Ci[h, n]
                    xrn = xr[j, n]
                    xin = xi[j, n]
                    vo_r = vr_all[h, k, n]
                    vo_i = vi_all[h, k, n]
                    c1 = cast_like(0, KR)
                    c2 = cast_like(0, KR)
                    for b in range(B):
                        vr, vi = state_update(k0, k1, k2, k3, k4, k5, xrn[b], xin[b], uk[b], o_r, o_i, sr, si)
                        vo_r[b] = cast_like(min(max(vr, s_lo), s_hi), vo_r)
                        vo_i[b] = cast_like(min(max(vi, s_lo), s_hi), vo_i)
                        vr, out_r = clip_counted(vr, lr, hr)
                        vi, out_i = clip_counted(vi, li, hi)
                        c1 = wadd(c1, out_r)
                        c2 = wadd(c2, out_i)
                        xrn[b] = vr
                        xin[b] = vi
                        a1[b] = wadd(a1[b], wmul(c_r, vr))
                        a2[b] = wadd(a2[b], wmul(c_i, vi))
                    cnt[0, j] += np.int64(c1)
                    cnt[1, j] += np.int64(c2)
            for b in range(B):
                for j in range(nh):
                    t1[b, k, h0 + j] = s1[j, b]
                    t2[b, k, h0 + j] = s2[j, b]
        for j in range(nh):
            nsat[0, h0 + j] = cnt[0, j]
            nsat[1, h0 + j] = cnt[1, j]


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract", "nsz"})
def _scan_bwd(u, KR, KI, Cr, Ci, c, vr_all, vi_all, g1, g2, gKR, gKI, gCr, gCi, gu, nchunks):
    """Reverse scan, in float64, with the forward's :class:`ScanConsts` ``c``. u, g1, g2 (B L H): the inputs and dLoss/dt1, dLoss/dt2; pre-clip
    states v (H L N2 B) as stored by :func:`_scan_fwd`, from which x = clamp(v, lo, hi) and the
    clip mask m = (lo <= v <= hi). Writes the gradients gKR, gKI, gCr, gCi and gu (B L H). With
    d_r = (g_r + g1_k Cre') m_r 2**-Sr (straight-through rounding) and likewise d_i:
    dKR += d_r (xr_{k-1}, -xi_{k-1}, u_k),  dKI += d_i (xi_{k-1}, xr_{k-1}, u_k),
    du_k = sum_n d_r KR2 + d_i KI2,  g_r <- d_r KR0 + d_i KI1,  g_i <- -d_r KR1 + d_i KI0.

    As in the forward the batch is the innermost loop and channels go in chunks: every constant
    is a scalar there, the eight gradient sums of a mode are scalar reductions over the batch, and
    the clip and its mask are computed in float64 (the codes are small integers, exact in float64:
    a clamp and an equality, no int64 conversion, which AVX2 lacks), so the loop vectorises on any
    x86-64 ISA. Floating-point sums may be reassociated (gradients, not codes); a channel's sums do
    not depend on the chunking.
    """
    B, L, H = u.shape
    N2 = KR.shape[2]
    Sr, Si, lor, hir, loi, hii = c.Sr, c.Si, c.lor, c.hir, c.loi, c.hii
    for ch in prange(nchunks):
        h0, h1 = ch * H // nchunks, (ch + 1) * H // nchunks
        nh = h1 - h0
        acc = np.zeros((nh, 8, N2))  # dKR0..2, dKI0..2, dCre', dCim' of each channel
        gr = np.zeros((nh, N2, B))  # dLoss/dx_k carried backwards through the recurrence
        gi = np.zeros((nh, N2, B))
        uc = np.empty((nh, B))
        g1c = np.empty((nh, B))
        g2c = np.empty((nh, B))
        su = np.empty((nh, B))
        zero = np.zeros(B, vr_all.dtype)  # x_{-1} = 0 (0 lies inside every clip range)
        for k in range(L - 1, -1, -1):
            for b in range(B):
                for j in range(nh):
                    uc[j, b] = u[b, k, h0 + j]
                    g1c[j, b] = g1[b, k, h0 + j]
                    g2c[j, b] = g2[b, k, h0 + j]
            for j in range(nh):
                h = h0 + j
                fr = 2.0 ** (-Sr[h])
                fi = 2.0 ** (-Si[h])
                lr, hr, li, hi = float(lor[h]), float(hir[h]), float(loi[h]), float(hii[h])
                uk = uc[j]
                g1k = g1c[j]
                g2k = g2c[j]
                sj = su[j]
                sj[:] = 0.0
                for n in range(N2):
                    kr0, kr1, kr2 = float(KR[0, h, n]), float(KR[1, h, n]), float(KR[2, h, n])
                    ki0, ki1, ki2 = float(KI[0, h, n]), float(KI[1, h, n]), float(KI[2, h, n])
                    cr, ci = float(Cr[h, n]), float(Ci[h, n])
                    vr_k = vr_all[h, k, n]
                    vi_k = vi_all[h, k, n]
                    vr_p = vr_all[h, k - 1, n] if k > 0 else zero
                    vi_p = vi_all[h, k - 1, n] if k > 0 else zero
                    grn = gr[j, n]
                    gin = gi[j, n]
                    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
                    for b in range(B):
                        p_r = min(max(float(vr_p[b]), lr), hr)
                        p_i = min(max(float(vi_p[b]), li), hi)
                        wr = float(vr_k[b])
                        wi = float(vi_k[b])
                        x_r = min(max(wr, lr), hr)
                        x_i = min(max(wi, li), hi)
                        dr = (grn[b] + g1k[b] * cr) * (fr if wr == x_r else 0.0)
                        di = (gin[b] + g2k[b] * ci) * (fi if wi == x_i else 0.0)
                        a0 += dr * p_r
                        a1 -= dr * p_i
                        a2 += dr * uk[b]
                        a3 += di * p_i
                        a4 += di * p_r
                        a5 += di * uk[b]
                        a6 += g1k[b] * x_r
                        a7 += g2k[b] * x_i
                        grn[b] = dr * kr0 + di * ki1
                        gin[b] = -dr * kr1 + di * ki0
                        sj[b] += dr * kr2 + di * ki2
                    acc[j, 0, n] += a0
                    acc[j, 1, n] += a1
                    acc[j, 2, n] += a2
                    acc[j, 3, n] += a3
                    acc[j, 4, n] += a4
                    acc[j, 5, n] += a5
                    acc[j, 6, n] += a6
                    acc[j, 7, n] += a7
            for b in range(B):
                for j in range(nh):
                    gu[b, k, h0 + j] = su[j, b]
        for j in range(nh):
            h = h0 + j
            for n in range(N2):
                gKR[0, h, n], gKR[1, h, n], gKR[2, h, n] = acc[j, 0, n], acc[j, 1, n], acc[j, 2, n]
                gKI[0, h, n], gKI[1, h, n], gKI[2, h, n] = acc[j, 3, n], acc[j, 4, n], acc[j, 5, n]
                gCr[h, n] = acc[j, 6, n]
                gCi[h, n] = acc[j, 7, n]


def _store_type(c: ScanConsts):
    """The narrowest of int16 / int32 whose range holds every clip bound strictly inside it (so a
    value saturated to the type's range is clipped, and masked, exactly as the original)."""
    lo, hi = min(c.lor.min(), c.loi.min()), max(c.hir.max(), c.hii.max())
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


def _fits_int32(u, KR, KI, Cr, Ci, c: ScanConsts) -> bool:
    """:func:`intssm.datapath.kernels.mode_loop_fits_int32` for this call, |u'| bounded by the batch's own max."""
    K = np.concatenate([KR, KI]).transpose(1, 0, 2)  # (H 6 N2)
    clip = np.stack([c.lor, c.hir, c.loi, c.hii, *max_offsets(c.Sr, c.Si, c.dither), c.Sr, c.Si], -1)  # (H 8)
    return mode_loop_fits_int32(K, np.stack([Cr, Ci], 1), clip, int(max(u.max(), -u.min())) if u.size else 0)


def _i64(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy().astype(np.int64))


class QuantScan(torch.autograd.Function):
    """(u, KR, KI, Cr, Ci) -> (t1, t2) with the layer's :class:`ScanConsts`; adds the clip counts
    of x_re and x_im per channel to ``nsat`` (2, H) int64."""

    @staticmethod
    def forward(ctx, u, KR, KI, Cr, Ci, consts: ScanConsts, nsat: np.ndarray):
        B, L, H = u.shape
        N2 = KR.shape[-1]
        uf = np.ascontiguousarray(u.detach().numpy(), dtype=np.float64)  # integers: read exactly by the kernels
        KRi, KIi, Cri, Cii = _i64(KR), _i64(KI), _i64(Cr), _i64(Ci)
        t1 = np.empty((B, L, H))  # the kernel's integer sums, stored exactly (|t| < 2**53)
        t2 = np.empty((B, L, H))
        shape, st = (H, L, N2, B), _store_type(consts)
        vr = _BUFFERS.take(shape, st)
        vi = _BUFFERS.take(shape, st)
        Kf, Cf = (KRi, KIi), (Cri, Cii)
        if _fits_int32(uf, KRi, KIi, Cri, Cii, consts):  # 8 int32 lanes, same integers
            Kf, Cf = (KRi.astype(np.int32), KIi.astype(np.int32)), (Cri.astype(np.int32), Cii.astype(np.int32))
        lim = np.iinfo(st)
        _scan_fwd(uf, *Kf, *Cf, consts, lim.min, lim.max, t1, t2, vr, vi, nsat, _chunks(H))
        ctx.saved = (uf, KRi, KIi, Cri, Cii, consts, vr, vi)
        return torch.from_numpy(t1), torch.from_numpy(t2)

    @staticmethod
    def backward(ctx, g1, g2):
        uf, KRi, KIi, Cri, Cii, consts, vr, vi = ctx.saved
        gKR = np.zeros(KRi.shape)
        gKI = np.zeros(KIi.shape)
        gCr = np.zeros(Cri.shape)
        gCi = np.zeros(Cii.shape)
        gu = np.empty(uf.shape)
        _scan_bwd(uf, KRi, KIi, Cri, Cii, consts, vr, vi,
                  np.ascontiguousarray(g1.numpy(), dtype=np.float64), np.ascontiguousarray(g2.numpy(), dtype=np.float64),
                  gKR, gKI, gCr, gCi, gu, _chunks(uf.shape[2]))
        ctx.saved = None
        _BUFFERS.give(vr, vi)
        t = torch.from_numpy
        return t(gu), t(gKR), t(gKI), t(gCr), t(gCi), None, None


def _chunks(H: int) -> int:
    """Channel chunks of the scan kernels: one per Numba thread (at most one per channel)."""
    return max(1, min(H, get_num_threads()))


def fused_scan(u, KR, KI, Cr, Ci, Sr, Si, lor, hir, loi, hii, dither_layer: int = -1):
    """(t1, t2, clips of x_re, clips of x_im) for u' (B L H); K* (3 H N2) tensors; S*, lo*, hi* (H),
    bundled by name into the kernels' :class:`ScanConsts`.
    ``dither_layer`` >= 0: the state is rounded with the dither of that layer's lanes (else half up)."""
    numba_setup()
    H, N2 = u.shape[-1], KR.shape[-1]
    as64 = lambda a: np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype=np.int64).reshape(-1), (H,)))  # noqa: E731
    nsat = np.zeros((2, H), np.int64)
    i = max(dither_layer, 0)
    hs = np.arange(H, dtype=np.int64)
    jr0, ji0 = weyl_lane_of(i, 0, H, hs, N2, 0), weyl_lane_of(i, 1, H, hs, N2, 0)  # + n: the mode's lane
    consts = ScanConsts(Sr=as64(Sr), Si=as64(Si), lor=as64(lor), hir=as64(hir), loi=as64(loi), hii=as64(hii), jr0=jr0, ji0=ji0,
                        dither=dither_layer >= 0)
    t1, t2 = QuantScan.apply(u, KR, KI, Cr, Ci, consts, nsat)
    return t1, t2, int(nsat[0].sum()), int(nsat[1].sum())
