"""Integer-only simulator of the quantized S4D datapath (Numba).

The kernel sees int64 arrays and the raw uint8 input, nothing else: no float, no Torch. It runs
parallel over the batch (``prange``; each thread writes only its own rows, so results do not
depend on the thread count) and streams over time, holding one state per sequence
(memory O(batch x layers x H x N/2), independent of the sequence length).

Arithmetic follows docs/datapath.md site by site; every accumulator's bound below 2**53 is
proved when the datapath is built, so int64 never wraps.
"""

from __future__ import annotations

import numpy as np
from numba import config, njit, prange

# Torch and Numba's OpenMP layer share libgomp's global thread count; the workqueue layer keeps
# Numba's threads out of Torch's way.
config.THREADING_LAYER = "workqueue"

from .errors import IntssmError
from .fixedpoint import (WEYL_MASK, WEYL_STEP, cast_like, offset_rshift, requantize, rounding_rshift, saturate,
                         state_round_offset, wadd, washr, weyl_lane, wmul, wsub)

# qrange rows (see intssm.qmodel.QRANGE_ORDER)
_H, _XRE, _XIM, _Y, _ACT, _GLU, _SIG, _POOL, _LOG = range(9)


@njit(cache=True)
def _run_one(P, lengths, b, enc_w, enc_w_z, enc_b, enc_M, enc_S, h_z,
             A_re, A_im, A_re_z, A_im_z, B_re, B_im, B_z, C_re, C_im, C_z, D, D_z,
             x_re_z, x_im_z, x_re_M, x_re_S, x_im_M, x_im_S, y_M, y_S, y_z,
             gelu_lut, act_z, mix_w, mix_w_z, mix_b, glu_M, glu_S, glu_z, sig_lut, h_M, h_S,
             pool_M, pool_S, pool_z, dec_w, dec_w_z, dec_b, logits_M, logits_S, logits_z, qrange, x_dither, mean_pool,
             out_logits, cnt, trace_re, trace_im, do_trace):
    """One sequence ``P[b]``, its first ``lengths[b]`` steps, through the datapath; writes
    ``out_logits[b]`` and ``cnt[b]``."""
    L, d_in = lengths[b], P.shape[2]
    nl, H, N2 = A_re.shape[0], A_re.shape[1], A_re.shape[2]
    C = dec_w.shape[0]
    xre = np.empty((nl, H, N2), np.int64)
    xim = np.empty((nl, H, N2), np.int64)
    for i in range(nl):
        for hh in range(H):
            for n in range(N2):
                xre[i, hh, n] = x_re_z[i, hh]  # state starts at real value 0
                xim[i, hh, n] = x_im_z[i, hh]
    h = np.empty(H, np.int64)
    a = np.empty(H, np.int64)
    g = np.empty(2 * H, np.int64)
    pool_acc = np.zeros(H, np.int64)
    hlo, hhi = qrange[_H, 0], qrange[_H, 1]
    dither = x_dither[0] != 0
    phase = np.int64(0)  # k WEYL_STEP mod 2**32: the dithered rounding's step phase
    for k in range(L):
        # encoder: h0 = requant(sum_j (W - z) p_j + b)
        for hh in range(H):
            acc = enc_b[hh]
            for j in range(d_in):
                acc += (enc_w[hh, j] - enc_w_z[hh]) * np.int64(P[b, k, j])
            v, c = requantize(acc, enc_M[hh], enc_S[hh], h_z[0], hlo, hhi)
            h[hh] = v
            cnt[b, 0] += c
        for i in range(nl):
            base = 1 + 5 * i
            for hh in range(H):
                u = h[hh] - h_z[i]
                zr, zi = x_re_z[i, hh], x_im_z[i, hh]
                ty1 = np.int64(0)
                ty2 = np.int64(0)
                for n in range(N2):
                    ar = A_re[i, hh, n] - A_re_z[i, hh]
                    ai = A_im[i, hh, n] - A_im_z[i, hh]
                    xr = xre[i, hh, n] - zr
                    xi = xim[i, hh, n] - zi
                    # x_re' = Are x_re - Aim x_im + Bre u ; x_im' = Are x_im + Aim x_re + Bim u
                    acc_r = (ar * xr) * x_re_M[i, 0, hh] - (ai * xi) * x_re_M[i, 1, hh] \
                        + ((B_re[i, hh, n] - B_z[i, hh]) * u) * x_re_M[i, 2, hh]
                    acc_i = (ar * xi) * x_im_M[i, 0, hh] + (ai * xr) * x_im_M[i, 1, hh] \
                        + ((B_im[i, hh, n] - B_z[i, hh]) * u) * x_im_M[i, 2, hh]
                    sr, si = x_re_S[i, hh], x_im_S[i, hh]
                    dr = state_round_offset(dither, phase, weyl_lane(i, 0, H, hh, N2, n), sr)
                    di = state_round_offset(dither, phase, weyl_lane(i, 1, H, hh, N2, n), si)
                    nr, c1 = saturate(offset_rshift(acc_r, dr, sr) + zr, qrange[_XRE, 0], qrange[_XRE, 1])
                    ni, c2 = saturate(offset_rshift(acc_i, di, si) + zi, qrange[_XIM, 0], qrange[_XIM, 1])
                    cnt[b, base] += c1
                    cnt[b, base + 1] += c2
                    xre[i, hh, n] = nr
                    xim[i, hh, n] = ni
                    ty1 += (nr - zr) * (C_re[i, hh, n] - C_z[i, hh])
                    ty2 += (ni - zi) * (C_im[i, hh, n] - C_z[i, hh])
                    if do_trace:
                        trace_re[k, i, hh, n] = nr
                        trace_im[k, i, hh, n] = ni
                # y = 2 Re(C x) + D u
                acc_y = ty1 * y_M[i, 0, hh] - ty2 * y_M[i, 1, hh] + ((D[i, hh] - D_z[i, hh]) * u) * y_M[i, 2, hh]
                y, c = saturate(rounding_rshift(acc_y, y_S[i, hh]) + y_z[i], qrange[_Y, 0], qrange[_Y, 1])
                cnt[b, base + 2] += c
                a[hh] = gelu_lut[i, y - qrange[_Y, 0]]
            # GLU mixing: g = requant(W (a - z) + b)
            for j in range(2 * H):
                acc = mix_b[i, j]
                for hh in range(H):
                    acc += (mix_w[i, j, hh] - mix_w_z[i, j]) * (a[hh] - act_z[i])
                v, c = requantize(acc, glu_M[i, j], glu_S[i, j], glu_z[i], qrange[_GLU, 0], qrange[_GLU, 1])
                g[j] = v
                cnt[b, base + 3] += c
            # residual: h <- requant(h + g_a * sigmoid(g_b))
            for hh in range(H):
                sg = sig_lut[i, g[H + hh] - qrange[_GLU, 0]]
                acc = (h[hh] - h_z[i]) * h_M[i, 0, hh] + ((g[hh] - glu_z[i]) * sg) * h_M[i, 1, hh]
                v, c = saturate(rounding_rshift(acc, h_S[i, hh]) + h_z[i + 1], hlo, hhi)
                h[hh] = v
                cnt[b, base + 4] += c
        for hh in range(H):
            if mean_pool:
                pool_acc[hh] += h[hh] - h_z[nl]
            else:
                pool_acc[hh] = h[hh] - h_z[nl]
        phase = (phase + WEYL_STEP) & WEYL_MASK
    ci = 1 + 5 * nl
    pooled = np.empty(H, np.int64)
    for hh in range(H):
        v, c = requantize(pool_acc[hh], pool_M[hh], pool_S[hh], pool_z[0], qrange[_POOL, 0], qrange[_POOL, 1])
        pooled[hh] = v
        cnt[b, ci] += c
    for o in range(C):
        acc = dec_b[o]
        for hh in range(H):
            acc += (dec_w[o, hh] - dec_w_z[o]) * (pooled[hh] - pool_z[0])
        v, c = requantize(acc, logits_M[o], logits_S[o], logits_z[0], qrange[_LOG, 0], qrange[_LOG, 1])
        out_logits[b, o] = v
        cnt[b, ci + 1] += c


@njit(cache=True, parallel=True)
def _run_batch(P, lengths, enc_w, enc_w_z, enc_b, enc_M, enc_S, h_z,
               A_re, A_im, A_re_z, A_im_z, B_re, B_im, B_z, C_re, C_im, C_z, D, D_z,
               x_re_z, x_im_z, x_re_M, x_re_S, x_im_M, x_im_S, y_M, y_S, y_z,
               gelu_lut, act_z, mix_w, mix_w_z, mix_b, glu_M, glu_S, glu_z, sig_lut, h_M, h_S,
               pool_M, pool_S, pool_z, dec_w, dec_w_z, dec_b, logits_M, logits_S, logits_z, qrange, x_dither, mean_pool,
               out_logits, cnt):
    dummy = np.zeros((1, 1, 1, 1), np.int64)
    for b in prange(P.shape[0]):
        _run_one(P, lengths, b, enc_w, enc_w_z, enc_b, enc_M, enc_S, h_z,
                 A_re, A_im, A_re_z, A_im_z, B_re, B_im, B_z, C_re, C_im, C_z, D, D_z,
                 x_re_z, x_im_z, x_re_M, x_re_S, x_im_M, x_im_S, y_M, y_S, y_z,
                 gelu_lut, act_z, mix_w, mix_w_z, mix_b, glu_M, glu_S, glu_z, sig_lut, h_M, h_S,
                 pool_M, pool_S, pool_z, dec_w, dec_w_z, dec_b, logits_M, logits_S, logits_z, qrange, x_dither, mean_pool,
                 out_logits, cnt, dummy, dummy, False)


@njit(cache=True)
def _run_traced(P, lengths, enc_w, enc_w_z, enc_b, enc_M, enc_S, h_z,
                A_re, A_im, A_re_z, A_im_z, B_re, B_im, B_z, C_re, C_im, C_z, D, D_z,
                x_re_z, x_im_z, x_re_M, x_re_S, x_im_M, x_im_S, y_M, y_S, y_z,
                gelu_lut, act_z, mix_w, mix_w_z, mix_b, glu_M, glu_S, glu_z, sig_lut, h_M, h_S,
                pool_M, pool_S, pool_z, dec_w, dec_w_z, dec_b, logits_M, logits_S, logits_z, qrange, x_dither, mean_pool,
                out_logits, cnt, trace_re, trace_im):
    _run_one(P, lengths, 0, enc_w, enc_w_z, enc_b, enc_M, enc_S, h_z,
             A_re, A_im, A_re_z, A_im_z, B_re, B_im, B_z, C_re, C_im, C_z, D, D_z,
             x_re_z, x_im_z, x_re_M, x_re_S, x_im_M, x_im_S, y_M, y_S, y_z,
             gelu_lut, act_z, mix_w, mix_w_z, mix_b, glu_M, glu_S, glu_z, sig_lut, h_M, h_S,
             pool_M, pool_S, pool_z, dec_w, dec_w_z, dec_b, logits_M, logits_S, logits_z, qrange, x_dither, mean_pool,
             out_logits, cnt, trace_re, trace_im, True)


@njit(cache=True)
def _fold_constants(A_re, A_im, A_re_z, A_im_z, B_re, B_im, B_z, C_re, C_im, C_z, x_re_M, x_im_M):
    """Per-mode constants of the fast kernel: centred weights times their site multipliers.

    K[0..5] = (Are' M0, Aim' M1, Bre' M2) for x_re and (Are' M0', Aim' M1', Bim' M2') for x_im;
    Cc[0..1] = (Cre', Cim'). Integer products are associative, so (a' M) x == (a' x) M exactly,
    and the bound proved for the site covers both orders.
    """
    nl, H, N2 = A_re.shape
    K = np.empty((nl, H, 6, N2), np.int64)
    Cc = np.empty((nl, H, 2, N2), np.int64)
    for i in range(nl):
        for hh in range(H):
            for n in range(N2):
                ar = A_re[i, hh, n] - A_re_z[i, hh]
                ai = A_im[i, hh, n] - A_im_z[i, hh]
                K[i, hh, 0, n] = ar * x_re_M[i, 0, hh]
                K[i, hh, 1, n] = ai * x_re_M[i, 1, hh]
                K[i, hh, 2, n] = (B_re[i, hh, n] - B_z[i, hh]) * x_re_M[i, 2, hh]
                K[i, hh, 3, n] = ar * x_im_M[i, 0, hh]
                K[i, hh, 4, n] = ai * x_im_M[i, 1, hh]
                K[i, hh, 5, n] = (B_im[i, hh, n] - B_z[i, hh]) * x_im_M[i, 2, hh]
                Cc[i, hh, 0, n] = C_re[i, hh, n] - C_z[i, hh]
                Cc[i, hh, 1, n] = C_im[i, hh, n] - C_z[i, hh]
    return K, Cc


@njit(cache=True, inline="always")
def state_update(k0, k1, k2, k3, k4, k5, xr, xi, u, rr, ri, sr, si):
    """Step 2 of docs/datapath.md on centred codes, before the clip, at the operands' width:
    (rshift(K0 xr - K1 xi + K2 u + rr, Sr), rshift(K3 xi + K4 xr + K5 u + ri, Si)) with K the
    folded constants of :func:`_fold_constants` and rr, ri the rounding offsets (2**(S-1), 0 for
    S = 0; or the dither's :func:`~intssm.fixedpoint.weyl_offset`). Shared by the
    fast simulator kernel and the fused QAT scan (:mod:`intssm.scan`)."""
    vr = washr(wadd(wadd(wsub(wmul(k0, xr), wmul(k1, xi)), wmul(k2, u)), rr), sr)
    vi = washr(wadd(wadd(wadd(wmul(k3, xi), wmul(k4, xr)), wmul(k5, u)), ri), si)
    return vr, vi


@njit(cache=True, inline="always")
def fill_state_offsets(out, dither, phase, j0, s):
    """out[n] = the rounding offset of lane j0 + n at step phase ``phase`` (``state_round_offset``),
    at ``out``'s width: one channel's modes. Shared by the fast simulator kernel and the fused QAT scan."""
    for n in range(out.shape[0]):
        out[n] = cast_like(state_round_offset(dither, phase, j0 + n, s), out)


@njit(cache=True, inline="always")
def output_acc(t1, t2, Du, m):
    """Step 3's accumulator M0 t1 - M1 t2 + M2 D' u' (t1 = sum_n C_re' x_re', t2 = sum_n C_im' x_im',
    Du = D' u'; ``m`` the site's three multipliers). Shared by the fast simulator kernel and the
    fused QAT kernels (:mod:`intssm.pointwise`)."""
    return t1 * m[0] - t2 * m[1] + Du * m[2]


@njit(cache=True, inline="always")
def residual_acc(u, gc, sg, m0, m1):
    """Step 7's accumulator M0 u' + M1 (g' sigma): the residual input u' = h - z_h plus the gated
    branch (g' = g[h] - z_glu, sigma = LUT_sig code). Shared like :func:`output_acc`."""
    return u * m0 + (gc * sg) * m1


@njit(cache=True)
def _encoder_table(enc_w, enc_w_z, enc_b, enc_M, enc_S, h_z, hlo, hhi):
    """For one input feature: the encoder's code h0[hh] and its saturation flag for each pixel 0..255.

    The same integers as the encoder site of :func:`_run_one`, computed once per value.
    """
    H = enc_w.shape[0]
    tab = np.empty((H, 256), np.int64)
    sat = np.empty((H, 256), np.int64)
    for hh in range(H):
        for px in range(256):
            acc = enc_b[hh] + (enc_w[hh, 0] - enc_w_z[hh]) * np.int64(px)
            tab[hh, px], sat[hh, px] = requantize(acc, enc_M[hh], enc_S[hh], h_z[0], hlo, hhi)
    return tab, sat


@njit(cache=True, parallel=True)
def _run_batch_fast(P, lengths, enc_w, enc_w_z, enc_b, enc_M, enc_S, h_z, enc_tab, enc_sat, K, Cc, clip, mwc, D, D_z,
                    x_re_z, x_im_z, x_re_S, x_im_S, y_M, y_S, y_z,
                    gelu_lut, act_z, mix_b, glu_M, glu_S, glu_z, sig_lut, h_M, h_S,
                    pool_M, pool_S, pool_z, dec_w, dec_w_z, dec_b, logits_M, logits_S, logits_z, qrange, x_dither, mean_pool,
                    out_logits, cnt):
    """The datapath of :func:`_run_one`, reorganised for speed; bit-exact with it (tests).

    The state is held centred (x' = q - z, clipped to [qmin - z, qmax - z], the same clip), the
    mode loop is branch-free (min/max and counted comparisons) so LLVM vectorises it, and
    per-mode constants are folded with their multipliers (:func:`_fold_constants`).
    """
    Bsz, L, d_in = P.shape
    nl, H, N2 = K.shape[0], K.shape[1], K.shape[3]
    C = dec_w.shape[0]
    hlo, hhi = qrange[_H, 0], qrange[_H, 1]
    ylo, yhi = qrange[_Y, 0], qrange[_Y, 1]
    glo, ghi = qrange[_GLU, 0], qrange[_GLU, 1]
    dither = x_dither[0] != 0
    for b in prange(Bsz):
        xr = np.zeros_like(K[:, :, 0, :])  # centred state, at the mode loop's width
        xi = np.zeros_like(K[:, :, 0, :])
        h = np.empty(H, np.int64)
        a = np.empty(H, mwc.dtype)  # centred activation codes, at the mixing loop's width
        g = np.empty(2 * H, np.int64)
        pool_acc = np.zeros(H, np.int64)
        c_loc = np.zeros(cnt.shape[1], np.int64)
        # rounding offsets of the state update, at the mode loop's width: 2**(S-1) (half up, filled
        # once), or refreshed every step from the Weyl sequence (dithered rounding)
        offr = np.empty_like(K[:, :, 0, :])
        offi = np.empty_like(K[:, :, 0, :])
        phase = np.int64(0)
        for k in range(lengths[b]):
            if dither or k == 0:
                for i in range(nl):
                    for hh in range(H):
                        fill_state_offsets(offr[i, hh], dither, phase, weyl_lane(i, 0, H, hh, N2, 0), x_re_S[i, hh])
                        fill_state_offsets(offi[i, hh], dither, phase, weyl_lane(i, 1, H, hh, N2, 0), x_im_S[i, hh])
            phase = (phase + WEYL_STEP) & WEYL_MASK
            if d_in == 1:  # one pixel per step: the encoder is a table over its 256 values
                px = np.int64(P[b, k, 0])
                for hh in range(H):
                    h[hh] = enc_tab[hh, px]
                    c_loc[0] += enc_sat[hh, px]
            else:
                for hh in range(H):
                    acc = enc_b[hh]
                    for j in range(d_in):
                        acc += (enc_w[hh, j] - enc_w_z[hh]) * np.int64(P[b, k, j])
                    v = rounding_rshift(acc * enc_M[hh], enc_S[hh]) + h_z[0]
                    c_loc[0] += (v < hlo) + (v > hhi)
                    h[hh] = min(max(v, hlo), hhi)
            for i in range(nl):
                base = 1 + 5 * i
                n_r = np.int64(0)
                n_i = np.int64(0)
                n_y = np.int64(0)
                for hh in range(H):
                    Kh = K[i, hh]
                    Ch = Cc[i, hh]
                    xrh = xr[i, hh]
                    xih = xi[i, hh]
                    cl = clip[i, hh]
                    lor, hir, loi, hii, sr, si = cl[0], cl[1], cl[2], cl[3], cl[6], cl[7]
                    orh = offr[i, hh]
                    oih = offi[i, hh]
                    u = cast_like(h[hh] - h_z[i], Kh)
                    t1 = cast_like(0, Kh)
                    t2 = cast_like(0, Kh)
                    c1 = cast_like(0, Kh)
                    c2 = cast_like(0, Kh)
                    for n in range(N2):
                        r0 = xrh[n]
                        i0 = xih[n]
                        vr, vi = state_update(Kh[0, n], Kh[1, n], Kh[2, n], Kh[3, n], Kh[4, n], Kh[5, n],
                                              r0, i0, u, orh[n], oih[n], sr, si)
                        c1 = wadd(c1, wadd(cast_like(vr < lor, Kh), cast_like(vr > hir, Kh)))
                        c2 = wadd(c2, wadd(cast_like(vi < loi, Kh), cast_like(vi > hii, Kh)))
                        vr = min(max(vr, lor), hir)
                        vi = min(max(vi, loi), hii)
                        xrh[n] = vr
                        xih[n] = vi
                        t1 = wadd(t1, wmul(Ch[0, n], vr))
                        t2 = wadd(t2, wmul(Ch[1, n], vi))
                    n_r += np.int64(c1)
                    n_i += np.int64(c2)
                    ty1 = np.int64(t1)
                    ty2 = np.int64(t2)
                    u = h[hh] - h_z[i]
                    acc_y = output_acc(ty1, ty2, (D[i, hh] - D_z[i, hh]) * u, y_M[i, :, hh])
                    y = rounding_rshift(acc_y, y_S[i, hh]) + y_z[i]
                    n_y += (y < ylo) + (y > yhi)
                    y = min(max(y, ylo), yhi)
                    a[hh] = gelu_lut[i, y - ylo] - act_z[i]
                c_loc[base] += n_r
                c_loc[base + 1] += n_i
                c_loc[base + 2] += n_y
                mw = mwc[i]
                n_g = np.int64(0)
                for j in range(2 * H):
                    t = cast_like(0, mw)
                    for hh in range(H):
                        t = wadd(t, wmul(mw[j, hh], a[hh]))
                    acc = mix_b[i, j] + np.int64(t)
                    v = rounding_rshift(acc * glu_M[i, j], glu_S[i, j]) + glu_z[i]
                    n_g += (v < glo) + (v > ghi)
                    g[j] = min(max(v, glo), ghi)
                c_loc[base + 3] += n_g
                n_h = np.int64(0)
                for hh in range(H):
                    sg = sig_lut[i, g[H + hh] - glo]
                    acc = residual_acc(h[hh] - h_z[i], g[hh] - glu_z[i], sg, h_M[i, 0, hh], h_M[i, 1, hh])
                    v = rounding_rshift(acc, h_S[i, hh]) + h_z[i + 1]
                    n_h += (v < hlo) + (v > hhi)
                    h[hh] = min(max(v, hlo), hhi)
                c_loc[base + 4] += n_h
            if mean_pool:
                for hh in range(H):
                    pool_acc[hh] += h[hh] - h_z[nl]
            else:
                for hh in range(H):
                    pool_acc[hh] = h[hh] - h_z[nl]
        ci = 1 + 5 * nl
        pooled = np.empty(H, np.int64)
        for hh in range(H):
            v = rounding_rshift(pool_acc[hh] * pool_M[hh], pool_S[hh]) + pool_z[0]
            c_loc[ci] += (v < qrange[_POOL, 0]) + (v > qrange[_POOL, 1])
            pooled[hh] = min(max(v, qrange[_POOL, 0]), qrange[_POOL, 1]) - pool_z[0]
        for o in range(C):
            acc = dec_b[o]
            for hh in range(H):
                acc += (dec_w[o, hh] - dec_w_z[o]) * pooled[hh]
            v = rounding_rshift(acc * logits_M[o], logits_S[o]) + logits_z[0]
            c_loc[ci + 1] += (v < qrange[_LOG, 0]) + (v > qrange[_LOG, 1])
            out_logits[b, o] = min(max(v, qrange[_LOG, 0]), qrange[_LOG, 1])
        for t in range(cnt.shape[1]):
            cnt[b, t] = c_loc[t]


#: Kernel arguments, in order; each is an int64 array of the integer model (see intssm.export).
ARG_ORDER = (
    "enc_w", "enc_w_z", "enc_b", "enc_M", "enc_S", "h_z",
    "A_re", "A_im", "A_re_z", "A_im_z", "B_re", "B_im", "B_z", "C_re", "C_im", "C_z", "D", "D_z",
    "x_re_z", "x_im_z", "x_re_M", "x_re_S", "x_im_M", "x_im_S", "y_M", "y_S", "y_z",
    "gelu_lut", "act_z", "mix_w", "mix_w_z", "mix_b", "glu_M", "glu_S", "glu_z", "sig_lut", "h_M", "h_S",
    "pool_M", "pool_S", "pool_z", "dec_w", "dec_w_z", "dec_b", "logits_M", "logits_S", "logits_z", "qrange",
    "x_dither",
)


#: Arguments of the fast kernel after (encoder args, K, Cc).
FAST_ARGS = ("D", "D_z", "x_re_z", "x_im_z", "x_re_S", "x_im_S", "y_M", "y_S", "y_z",
             "gelu_lut", "act_z", "mix_b", "glu_M", "glu_S", "glu_z", "sig_lut", "h_M", "h_S",
             "pool_M", "pool_S", "pool_z", "dec_w", "dec_w_z", "dec_b", "logits_M", "logits_S", "logits_z", "qrange",
             "x_dither")


def _args(arrays: dict):
    out = []
    for k in ARG_ORDER:
        v = arrays[k]
        if v.dtype != np.int64:
            v = v.astype(np.int64)
        out.append(np.ascontiguousarray(v))
    return out


def max_offsets(Sr: np.ndarray, Si: np.ndarray, dither: bool) -> tuple[np.ndarray, np.ndarray]:
    """Largest rounding offset of the state update for shifts S: 2**(S-1) (0 for S = 0) when
    rounding half up, 2**S - 1 with the dither (fixedpoint.weyl_offset)."""
    if dither:
        return (1 << Sr) - 1, (1 << Si) - 1
    return (1 << Sr) >> 1, (1 << Si) >> 1


def mode_constants(a: dict) -> np.ndarray:
    """(layers, H, 8) per-channel constants of the mode loop: centred clip bounds of x_re and x_im
    (lo_r, hi_r, lo_i, hi_i), the largest rounding offsets (:func:`max_offsets`; for the int32 bound)
    and the shifts S_r, S_i."""
    q = a["qrange"]
    zr, zi, Sr, Si = a["x_re_z"], a["x_im_z"], a["x_re_S"], a["x_im_S"]
    orr, ori = max_offsets(Sr, Si, bool(a["x_dither"][0]))
    return np.ascontiguousarray(np.stack([q[_XRE, 0] - zr, q[_XRE, 1] - zr, q[_XIM, 0] - zi, q[_XIM, 1] - zi,
                                          orr, ori, Sr, Si], -1).astype(np.int64))


def mode_loop_fits_int32(K: np.ndarray, Cc: np.ndarray, clip: np.ndarray, U) -> bool:
    """True if the mode loop provably never leaves int32, so it may run at 32 bits.

    ``K`` (..., 6, N/2) folded constants, ``Cc`` (..., 2, N/2), ``clip`` (..., 8) as
    :func:`mode_constants`, ``U`` the bound on |u'| (broadcast against ``...``). For every mode,
    with |x_re'| <= X_r, |x_im'| <= X_i (the clip bounds):
    |K0| X_r + |K1| X_i + |K2| U + 2**(S_r-1) < 2**31 (and the same for x_im), which bounds every
    product and partial sum of the update in any order; sum_n |C'| X < 2**31 bounds the output
    sums; and the shifts are below 32. Computed in int64, exact: every term is below 2**53.
    The simulator (per model) and the fused QAT scan (per call) both decide with this.
    """
    lim = 2**31
    U = np.asarray(U, dtype=np.int64)[..., None]
    Xr = np.maximum(np.abs(clip[..., 0]), np.abs(clip[..., 1]))[..., None]  # (..., 1)
    Xi = np.maximum(np.abs(clip[..., 2]), np.abs(clip[..., 3]))[..., None]
    Ka = np.abs(K)
    re = Ka[..., 0, :] * Xr + Ka[..., 1, :] * Xi + Ka[..., 2, :] * U + clip[..., 4:5]
    im = Ka[..., 3, :] * Xi + Ka[..., 4, :] * Xr + Ka[..., 5, :] * U + clip[..., 5:6]
    out = max((np.abs(Cc[..., 0, :]).sum(-1) * Xr[..., 0]).max(), (np.abs(Cc[..., 1, :]).sum(-1) * Xi[..., 0]).max())
    return bool(re.max() < lim and im.max() < lim and out < lim and clip[..., 6:].max() < 32)


def state_fits_int32(a: dict, K: np.ndarray, Cc: np.ndarray, clip: np.ndarray) -> bool:
    """:func:`mode_loop_fits_int32` for a whole model, |u'| bounded by each layer's input code range."""
    q, hz = a["qrange"], a["h_z"]
    U = np.maximum(np.abs(q[_H, 0] - hz[:-1]), np.abs(q[_H, 1] - hz[:-1]))[:, None]  # (nl 1)
    return mode_loop_fits_int32(K, Cc, clip, U)


def mix_fits_int32(a: dict, mwc: np.ndarray) -> bool:
    """True if the mixing sums sum_h W'[j, h] a'[h] (bias excluded) provably fit int32:
    sum_h |W'[j, h]| max|a'| < 2**31, max|a'| from the activation code range and zero point."""
    q, az = a["qrange"], a["act_z"]
    A = np.maximum(np.abs(q[_ACT, 0] - az), np.abs(q[_ACT, 1] - az))  # (nl,)
    return bool((np.abs(mwc).sum(-1) * A[:, None]).max() < 2**31)


def simulate(arrays: dict, P: np.ndarray, mean_pool: bool, n_counters: int, trace: bool = False,
             reference: bool = False, width: int | None = None, lengths: np.ndarray | None = None):
    """Run the integer model ``arrays`` on input codes ``P`` (B, L, d_input) uint8, sequence b for
    its first ``lengths[b]`` steps (None: all L; a mean-pooling model needs all L).

    Returns (logit codes (B, d_output) int64, saturation counts (B, n_counters) int64, trace) where
    trace = (x_re, x_im) codes (L, layers, H, N/2) of sequence 0 when ``trace`` is set, else None
    (steps from lengths[0] on stay 0).
    The fast kernel runs its mode loop in int32 when :func:`state_fits_int32` proves it safe
    (``width=None``), or at the ``width`` given (64, or 32 where proved); the integers are the same.
    """
    if width not in (None, 32, 64):
        raise IntssmError(f"simulator width must be 32 or 64, got {width}")
    if not isinstance(P, np.ndarray) or P.dtype != np.uint8:
        raise TypeError(f"simulator input must be a uint8 array of raw pixels, got {getattr(P, 'dtype', type(P))}")
    if P.ndim != 3:
        raise IntssmError(f"simulator input must be (batch, length, features), got shape {P.shape}")
    if P.shape[2] != arrays["enc_w"].shape[1]:
        raise IntssmError(f"input has {P.shape[2]} features per step, the model expects {arrays['enc_w'].shape[1]}")
    if arrays["x_dither"][0] and max(arrays["x_re_S"].max(), arrays["x_im_S"].max()) > 32:
        raise IntssmError("the dithered state rounding needs state shifts <= 32")
    P = np.ascontiguousarray(P)
    Bsz = P.shape[0]
    if lengths is None:
        lengths = np.full(Bsz, P.shape[1], np.int64)
    lengths = np.ascontiguousarray(np.asarray(lengths).astype(np.int64))
    if lengths.shape != (Bsz,) or (Bsz and (lengths.min() < 1 or lengths.max() > P.shape[1])):
        raise IntssmError(f"lengths must be one value in 1..{P.shape[1]} per sequence, got shape {lengths.shape}")
    if mean_pool and Bsz and lengths.min() != P.shape[1]:
        raise IntssmError("a mean-pooling model runs every sequence for its full length; variable-length "
                          "data need a model with pool 'last'")
    C = arrays["dec_w"].shape[0]
    logits = np.zeros((Bsz, C), np.int64)
    cnt = np.zeros((Bsz, n_counters), np.int64)
    args = _args(arrays)
    if trace:
        nl, H, N2 = arrays["A_re"].shape
        tr = np.zeros((P.shape[1], nl, H, N2), np.int64)
        ti = np.zeros_like(tr)
        _run_traced(P[:1], lengths[:1], *args, bool(mean_pool), logits[:1], cnt[:1], tr, ti)
        return logits[:1], cnt[:1], (tr, ti)
    if reference:
        _run_batch(P, lengths, *args, bool(mean_pool), logits, cnt)
        return logits, cnt, None
    a = {k: v for k, v in zip(ARG_ORDER, args)}
    K, Cc = _fold_constants(a["A_re"], a["A_im"], a["A_re_z"], a["A_im_z"], a["B_re"], a["B_im"], a["B_z"],
                            a["C_re"], a["C_im"], a["C_z"], a["x_re_M"], a["x_im_M"])
    qr = a["qrange"]
    if P.shape[2] == 1:
        tab, sat = _encoder_table(*[a[k] for k in ARG_ORDER[:6]], qr[_H, 0], qr[_H, 1])
    else:
        tab = sat = np.zeros((1, 1), np.int64)
    mwc = np.ascontiguousarray(a["mix_w"] - a["mix_w_z"][..., None])  # centred mixing weights
    clip = mode_constants(a)
    fits = width != 64 and state_fits_int32(a, K, Cc, clip)
    if width == 32 and not fits:
        raise IntssmError("this model's state update does not provably fit int32; use the 64-bit kernel")
    if fits:
        K, Cc, clip = K.astype(np.int32), Cc.astype(np.int32), clip.astype(np.int32)
    if width != 64 and mix_fits_int32(a, mwc):
        mwc = mwc.astype(np.int32)
    fast = [tab, sat, K, Cc, clip, mwc] + [a[k] for k in FAST_ARGS]
    _run_batch_fast(P, lengths, *[a[k] for k in ARG_ORDER[:6]], *fast, bool(mean_pool), logits, cnt)
    return logits, cnt, None
