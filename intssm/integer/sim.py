"""Integer-only simulator of the quantized S4D datapath (Numba).

The kernels see the model as one bundle of integer arrays (:data:`intssm.datapath.layout.IntArrays`;
the fast kernel's :data:`FastArrays`) and the raw uint8 input, nothing else: no float, no Torch.
They run parallel over the batch (``prange``; each thread writes only its own rows, so results do
not depend on the thread count) and stream over time, holding one state per sequence
(memory O(batch x layers x H x N/2), independent of the sequence length). ``_run_one`` is the
readable reference, one sequence at a time; ``_run_blocks_fast`` runs blocks of sequences in
vector lanes and is bit-exact with it (tests).

Arithmetic follows docs/datapath.md site by site; every accumulator's bound below 2**53 is
proved when the datapath is built and again when a model is loaded
(:func:`intssm.datapath.layout.validate`), so int64 never wraps; int32 lanes run only where
:func:`intssm.datapath.kernels.mode_loop_fits_int32` proves them safe.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import get_num_threads, njit, prange

from intssm.datapath import layout
from intssm.errors import IntssmError
from intssm.datapath.fixedpoint import (WEYL_MASK, WEYL_STEP, cast_like, offset_rshift, requantize, rounding_rshift, saturate,
                         state_round_offset, wadd, weyl_lane, wmul)
from intssm.datapath.kernels import (CL_HI_I, CL_HI_R, CL_LO_I, CL_LO_R, CL_S_I, CL_S_R, clip_counted, fill_state_offsets, mixing_fits_int32,
                      mode_constants, mode_loop_fits_int32, numba_setup, output_acc, residual_acc, state_update)
from intssm.datapath.layout import C_GLU, C_H, C_LOGITS, C_POOL, C_XIM, C_XRE, C_Y, R_ACT, R_GLU, R_H, R_LOGITS, R_POOL, R_XIM, R_XRE, R_Y

layer_base = njit(cache=True, inline="always")(layout.layer_base)  # counter indices, inside the kernels
head_base = njit(cache=True, inline="always")(layout.head_base)


@njit(cache=True, inline="always")
def mean_rescale(acc, steps, seq_len):
    """The streaming readout's pooling sum (docs/datapath.md, "Streaming readout"): the sum ``acc``
    of ``steps`` centred outputs scaled to the ``seq_len`` steps the pooling multiplier was made
    for, round_half_up(acc seq_len / steps) = floor((2 acc seq_len + steps) / (2 steps)) (floor
    division; the identity at steps = seq_len). |result| <= seq_len max|h'|, the pooling bound."""
    return (2 * acc * seq_len + steps) // (2 * steps)


@njit(cache=True)
def _run_one(P, lengths, b, m, mean_pool, pool_len, out_logits, cnt, trace_re, trace_im, do_trace):
    """One sequence ``P[b]``, its first ``lengths[b]`` steps, through the datapath; writes
    ``out_logits[b]`` and ``cnt[b]``. ``pool_len`` > 0: mean pooling reads out through
    :func:`mean_rescale` to that length."""
    L, d_in = lengths[b], P.shape[2]
    nl, H, N2 = m.A_re.shape[0], m.A_re.shape[1], m.A_re.shape[2]
    C = m.dec_w.shape[0]
    xre = np.empty((nl, H, N2), np.int64)
    xim = np.empty((nl, H, N2), np.int64)
    for i in range(nl):
        for hh in range(H):
            for n in range(N2):
                xre[i, hh, n] = m.x_re_z[i, hh]  # state starts at real value 0
                xim[i, hh, n] = m.x_im_z[i, hh]
    h = np.empty(H, np.int64)
    a = np.empty(H, np.int64)
    g = np.empty(2 * H, np.int64)
    pool_acc = np.zeros(H, np.int64)
    hlo, hhi = m.qrange[R_H, 0], m.qrange[R_H, 1]
    dither = m.x_dither[0] != 0
    phase = np.int64(0)  # k WEYL_STEP mod 2**32: the dithered rounding's step phase
    for k in range(L):
        # encoder: h0 = requant(sum_j (W - z) p_j + b)
        for hh in range(H):
            acc = m.enc_b[hh]
            for j in range(d_in):
                acc += (m.enc_w[hh, j] - m.enc_w_z[hh]) * np.int64(P[b, k, j])
            v, c = requantize(acc, m.enc_M[hh], m.enc_S[hh], m.h_z[0], hlo, hhi)
            h[hh] = v
            cnt[b, 0] += c
        for i in range(nl):
            base = layer_base(i)
            for hh in range(H):
                u = h[hh] - m.h_z[i]
                zr, zi = m.x_re_z[i, hh], m.x_im_z[i, hh]
                ty1 = np.int64(0)
                ty2 = np.int64(0)
                for n in range(N2):
                    ar = m.A_re[i, hh, n] - m.A_re_z[i, hh]
                    ai = m.A_im[i, hh, n] - m.A_im_z[i, hh]
                    xr = xre[i, hh, n] - zr
                    xi = xim[i, hh, n] - zi
                    # x_re' = Are x_re - Aim x_im + Bre u ; x_im' = Are x_im + Aim x_re + Bim u
                    acc_r = (ar * xr) * m.x_re_M[i, 0, hh] - (ai * xi) * m.x_re_M[i, 1, hh] \
                        + ((m.B_re[i, hh, n] - m.B_z[i, hh]) * u) * m.x_re_M[i, 2, hh]
                    acc_i = (ar * xi) * m.x_im_M[i, 0, hh] + (ai * xr) * m.x_im_M[i, 1, hh] \
                        + ((m.B_im[i, hh, n] - m.B_z[i, hh]) * u) * m.x_im_M[i, 2, hh]
                    sr, si = m.x_re_S[i, hh], m.x_im_S[i, hh]
                    dr = state_round_offset(dither, phase, weyl_lane(i, 0, H, hh, N2, n), sr)
                    di = state_round_offset(dither, phase, weyl_lane(i, 1, H, hh, N2, n), si)
                    nr, c1 = saturate(offset_rshift(acc_r, dr, sr) + zr, m.qrange[R_XRE, 0], m.qrange[R_XRE, 1])
                    ni, c2 = saturate(offset_rshift(acc_i, di, si) + zi, m.qrange[R_XIM, 0], m.qrange[R_XIM, 1])
                    cnt[b, base + C_XRE] += c1
                    cnt[b, base + C_XIM] += c2
                    xre[i, hh, n] = nr
                    xim[i, hh, n] = ni
                    ty1 += (nr - zr) * (m.C_re[i, hh, n] - m.C_z[i, hh])
                    ty2 += (ni - zi) * (m.C_im[i, hh, n] - m.C_z[i, hh])
                    if do_trace:
                        trace_re[k, i, hh, n] = nr
                        trace_im[k, i, hh, n] = ni
                # y = 2 Re(C x) + m.D u
                acc_y = ty1 * m.y_M[i, 0, hh] - ty2 * m.y_M[i, 1, hh] + ((m.D[i, hh] - m.D_z[i, hh]) * u) * m.y_M[i, 2, hh]
                y, c = saturate(rounding_rshift(acc_y, m.y_S[i, hh]) + m.y_z[i], m.qrange[R_Y, 0], m.qrange[R_Y, 1])
                cnt[b, base + C_Y] += c
                a[hh] = m.gelu_lut[i, y - m.qrange[R_Y, 0]]
            # GLU mixing: g = requant(W (a - z) + b)
            for j in range(2 * H):
                acc = m.mix_b[i, j]
                for hh in range(H):
                    acc += (m.mix_w[i, j, hh] - m.mix_w_z[i, j]) * (a[hh] - m.act_z[i])
                v, c = requantize(acc, m.glu_M[i, j], m.glu_S[i, j], m.glu_z[i], m.qrange[R_GLU, 0], m.qrange[R_GLU, 1])
                g[j] = v
                cnt[b, base + C_GLU] += c
            # residual: h <- requant(h + g_a * sigmoid(g_b))
            for hh in range(H):
                sg = m.sig_lut[i, g[H + hh] - m.qrange[R_GLU, 0]]
                acc = (h[hh] - m.h_z[i]) * m.h_M[i, 0, hh] + ((g[hh] - m.glu_z[i]) * sg) * m.h_M[i, 1, hh]
                v, c = saturate(rounding_rshift(acc, m.h_S[i, hh]) + m.h_z[i + 1], hlo, hhi)
                h[hh] = v
                cnt[b, base + C_H] += c
        for hh in range(H):
            if mean_pool:
                pool_acc[hh] += h[hh] - m.h_z[nl]
            else:
                pool_acc[hh] = h[hh] - m.h_z[nl]
        phase = (phase + WEYL_STEP) & WEYL_MASK
    ci = head_base(nl)
    pooled = np.empty(H, np.int64)
    for hh in range(H):
        pa = pool_acc[hh]
        if mean_pool and pool_len > 0:
            pa = mean_rescale(pa, np.int64(L), pool_len)
        v, c = requantize(pa, m.pool_M[hh], m.pool_S[hh], m.pool_z[0], m.qrange[R_POOL, 0], m.qrange[R_POOL, 1])
        pooled[hh] = v
        cnt[b, ci + C_POOL] += c
    for o in range(C):
        acc = m.dec_b[o]
        for hh in range(H):
            acc += (m.dec_w[o, hh] - m.dec_w_z[o]) * (pooled[hh] - m.pool_z[0])
        v, c = requantize(acc, m.logits_M[o], m.logits_S[o], m.logits_z[0], m.qrange[R_LOGITS, 0], m.qrange[R_LOGITS, 1])
        out_logits[b, o] = v
        cnt[b, ci + C_LOGITS] += c


@njit(cache=True, parallel=True)
def _run_batch(P, lengths, m, mean_pool, pool_len, out_logits, cnt):
    dummy = np.zeros((1, 1, 1, 1), np.int64)
    for b in prange(P.shape[0]):
        _run_one(P, lengths, b, m, mean_pool, pool_len, out_logits, cnt, dummy, dummy, False)


@njit(cache=True)
def _run_traced(P, lengths, m, mean_pool, pool_len, out_logits, cnt, trace_re, trace_im):
    _run_one(P, lengths, 0, m, mean_pool, pool_len, out_logits, cnt, trace_re, trace_im, True)


@njit(cache=True)
def fold_constants(A_re, A_im, A_re_z, A_im_z, B_re, B_im, B_z, C_re, C_im, C_z, x_re_M, x_im_M):
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
def _run_blocks_fast(P, lengths, order, bstart, bcount, f, mean_pool, pool_len, out_logits, cnt):
    """The datapath of :func:`_run_one`, reorganised for speed; bit-exact with it (tests).

    Sequences run in blocks of equal length (``order[bstart[j] : bstart[j] + bcount[j]]``), one
    block per thread at a time, every sequence of a block in its own lane: all state and
    activations are held lane-innermost (structure of arrays: ``x[layer, h, n, lane]``), so each
    site is one loop over the block's lanes with the site's constants as scalars, which LLVM
    vectorises on any ISA (8 int32 lanes under AVX2, 16 under AVX-512). The state is held centred
    (x' = q - z, clipped to [qmin - z, qmax - z], the same clip), the loops are branch-free (min/max
    and counted comparisons), and per-mode constants are folded with their multipliers
    (:func:`fold_constants`). Each lane computes exactly its own sequence's integers, in the
    reference kernel's order for every sum that is not exact in any order.
    """
    Bsz, L, d_in = P.shape
    nl, H, N2 = f.K.shape[0], f.K.shape[1], f.K.shape[3]
    C = f.dec_w.shape[0]
    ncnt = cnt.shape[1]
    hlo, hhi = f.qrange[R_H, 0], f.qrange[R_H, 1]
    ylo, yhi = f.qrange[R_Y, 0], f.qrange[R_Y, 1]
    glo, ghi = f.qrange[R_GLU, 0], f.qrange[R_GLU, 1]
    plo, phi = f.qrange[R_POOL, 0], f.qrange[R_POOL, 1]
    olo, ohi = f.qrange[R_LOGITS, 0], f.qrange[R_LOGITS, 1]
    dither = f.x_dither[0] != 0
    for blk in prange(bstart.shape[0]):
        nb = bcount[blk]
        seqs = order[bstart[blk]:bstart[blk] + nb]
        Lb = lengths[seqs[0]]
        xr = np.zeros((nl, H, N2, nb), f.K.dtype)  # centred state, at the mode loop's width
        xi = np.zeros((nl, H, N2, nb), f.K.dtype)
        h = np.empty((H, nb), np.int64)  # residual stream codes
        a = np.empty((H, nb), f.mwc.dtype)  # centred activation codes, at the mixing loop's width
        g = np.empty((2 * H, nb), np.int64)
        u = np.empty(nb, f.K.dtype)
        t1 = np.empty(nb, f.K.dtype)
        t2 = np.empty(nb, f.K.dtype)
        n_r = np.empty(nb, f.K.dtype)  # clips of one layer's step: at most H N/2 per lane
        n_i = np.empty(nb, f.K.dtype)
        tm = np.empty(nb, f.mwc.dtype)
        px = np.empty(nb, np.int64)
        pool_acc = np.zeros((H, nb), np.int64)
        c_loc = np.zeros((ncnt, nb), np.int64)
        # rounding offsets of the state update, at the mode loop's width: 2**(S-1) (half up, filled
        # once), or refreshed every step from the Weyl sequence (dithered rounding); the same for
        # every lane (they depend on the step and the mode, not on the sequence)
        offr = np.empty_like(f.K[:, :, 0, :])
        offi = np.empty_like(f.K[:, :, 0, :])
        phase = np.int64(0)
        for k in range(Lb):
            if dither or k == 0:
                for i in range(nl):
                    for hh in range(H):
                        fill_state_offsets(offr[i, hh], dither, phase, weyl_lane(i, 0, H, hh, N2, 0), f.x_re_S[i, hh])
                        fill_state_offsets(offi[i, hh], dither, phase, weyl_lane(i, 1, H, hh, N2, 0), f.x_im_S[i, hh])
            phase = (phase + WEYL_STEP) & WEYL_MASK
            if d_in == 1:  # one pixel per step: the encoder is a table over its 256 values
                for ln in range(nb):
                    px[ln] = P[seqs[ln], k, 0]
                for hh in range(H):
                    for ln in range(nb):
                        h[hh, ln] = f.enc_tab[hh, px[ln]]
                        c_loc[0, ln] += f.enc_sat[hh, px[ln]]
            else:
                for hh in range(H):
                    for ln in range(nb):
                        acc = f.enc_b[hh]
                        for j in range(d_in):
                            acc += (f.enc_w[hh, j] - f.enc_w_z[hh]) * np.int64(P[seqs[ln], k, j])
                        v = rounding_rshift(acc * f.enc_M[hh], f.enc_S[hh]) + f.h_z[0]
                        c_loc[0, ln] += (v < hlo) + (v > hhi)
                        h[hh, ln] = min(max(v, hlo), hhi)
            for i in range(nl):
                base = layer_base(i)
                n_r[:] = 0
                n_i[:] = 0
                for hh in range(H):
                    Kh = f.K[i, hh]
                    Ch = f.Cc[i, hh]
                    cl = f.clip[i, hh]
                    lor, hir, loi, hii, sr, si = cl[CL_LO_R], cl[CL_HI_R], cl[CL_LO_I], cl[CL_HI_I], cl[CL_S_R], cl[CL_S_I]
                    hz = f.h_z[i]
                    for ln in range(nb):
                        u[ln] = cast_like(h[hh, ln] - hz, Kh)
                    t1[:] = 0
                    t2[:] = 0
                    for n in range(N2):
                        k0, k1, k2, k3, k4, k5 = Kh[0, n], Kh[1, n], Kh[2, n], Kh[3, n], Kh[4, n], Kh[5, n]
                        o_r, o_i = offr[i, hh, n], offi[i, hh, n]
                        c_r, c_i = Ch[0, n], Ch[1, n]
                        xrn = xr[i, hh, n]
                        xin = xi[i, hh, n]
                        for ln in range(nb):
                            vr, vi = state_update(k0, k1, k2, k3, k4, k5, xrn[ln], xin[ln], u[ln], o_r, o_i, sr, si)
                            vr, out_r = clip_counted(vr, lor, hir)
                            vi, out_i = clip_counted(vi, loi, hii)
                            n_r[ln] = wadd(n_r[ln], out_r)
                            n_i[ln] = wadd(n_i[ln], out_i)
                            xrn[ln] = vr
                            xin[ln] = vi
                            t1[ln] = wadd(t1[ln], wmul(c_r, vr))
                            t2[ln] = wadd(t2[ln], wmul(c_i, vi))
                    dz, m = f.D[i, hh] - f.D_z[i, hh], f.y_M[i, :, hh]
                    ys, yz, az = f.y_S[i, hh], f.y_z[i], f.act_z[i]
                    for ln in range(nb):
                        acc_y = output_acc(np.int64(t1[ln]), np.int64(t2[ln]), dz * (h[hh, ln] - hz), m)
                        y = rounding_rshift(acc_y, ys) + yz
                        c_loc[base + C_Y, ln] += (y < ylo) + (y > yhi)
                        y = min(max(y, ylo), yhi)
                        a[hh, ln] = f.gelu_lut[i, y - ylo] - az
                for ln in range(nb):
                    c_loc[base + C_XRE, ln] += np.int64(n_r[ln])
                    c_loc[base + C_XIM, ln] += np.int64(n_i[ln])
                mw = f.mwc[i]
                for j in range(2 * H):
                    tm[:] = 0
                    for hh in range(H):
                        w = mw[j, hh]
                        ah = a[hh]
                        for ln in range(nb):
                            tm[ln] = wadd(tm[ln], wmul(w, ah[ln]))
                    mb, gm, gs, gz = f.mix_b[i, j], f.glu_M[i, j], f.glu_S[i, j], f.glu_z[i]
                    for ln in range(nb):
                        v = rounding_rshift((mb + np.int64(tm[ln])) * gm, gs) + gz
                        c_loc[base + C_GLU, ln] += (v < glo) + (v > ghi)
                        g[j, ln] = min(max(v, glo), ghi)
                for hh in range(H):
                    m0, m1, hs, hz0, hz1 = f.h_M[i, 0, hh], f.h_M[i, 1, hh], f.h_S[i, hh], f.h_z[i], f.h_z[i + 1]
                    for ln in range(nb):
                        sg = f.sig_lut[i, g[H + hh, ln] - glo]
                        acc = residual_acc(h[hh, ln] - hz0, g[hh, ln] - f.glu_z[i], sg, m0, m1)
                        v = rounding_rshift(acc, hs) + hz1
                        c_loc[base + C_H, ln] += (v < hlo) + (v > hhi)
                        h[hh, ln] = min(max(v, hlo), hhi)
            hz = f.h_z[nl]
            for hh in range(H):
                for ln in range(nb):
                    if mean_pool:
                        pool_acc[hh, ln] += h[hh, ln] - hz
                    else:
                        pool_acc[hh, ln] = h[hh, ln] - hz
        ci = head_base(nl)
        pooled = np.empty(H, np.int64)
        for ln in range(nb):
            b = seqs[ln]
            for hh in range(H):
                pa = pool_acc[hh, ln]
                if mean_pool and pool_len > 0:
                    pa = mean_rescale(pa, np.int64(Lb), pool_len)
                v = rounding_rshift(pa * f.pool_M[hh], f.pool_S[hh]) + f.pool_z[0]
                c_loc[ci + C_POOL, ln] += (v < plo) + (v > phi)
                pooled[hh] = min(max(v, plo), phi) - f.pool_z[0]
            for o in range(C):
                acc = f.dec_b[o]
                for hh in range(H):
                    acc += (f.dec_w[o, hh] - f.dec_w_z[o]) * pooled[hh]
                v = rounding_rshift(acc * f.logits_M[o], f.logits_S[o]) + f.logits_z[0]
                c_loc[ci + C_LOGITS, ln] += (v < olo) + (v > ohi)
                out_logits[b, o] = min(max(v, olo), ohi)
            for t in range(ncnt):
                cnt[b, t] = c_loc[t, ln]


#: Most lanes of a fast kernel block: many vectors of any ISA per loop over lanes, so the loop's
#: set-up is paid rarely (2 AVX2 cores, one run each: paper-small, 10,000 sequences, 1.9 s at 128
#: lanes against 2.2 s at 64 and 3.1 s at 32; base, 1,024 sequences, 4.2 s against 4.6 and 5.9 s).
LANES = 128


def lanes_for(n: int, threads: int) -> int:
    """Lanes per block for ``n`` sequences on ``threads`` threads: :data:`LANES`, fewer (a multiple
    of 8, at least 8) when that leaves a thread without a block."""
    per_thread = -(-n // max(threads, 1))
    return int(min(LANES, max(8, -(-per_thread // 8) * 8)))


def blocks(lengths: np.ndarray, lanes: int = LANES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, start, count): the sequences sorted by length (stable), cut into blocks of at most
    ``lanes`` sequences of one length; block j is ``order[start[j] : start[j] + count[j]]``."""
    order = np.argsort(lengths, kind="stable")
    ls = lengths[order]
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(ls)) + 1, [len(ls)]])
    starts = [s for a, b in zip(bounds[:-1], bounds[1:]) for s in range(a, b, lanes)] + [len(ls)]
    st = np.asarray(starts, np.int64)
    return order.astype(np.int64), st[:-1], np.diff(st)


#: The fast kernel's arrays: the encoder's, its 256-entry tables (one pixel per step), the folded
#: mode constants (:func:`fold_constants`), the mode loop's per-channel constants
#: (:func:`intssm.datapath.kernels.mode_constants`), the centred mixing weights, then the rest as in the layout.
FastArrays = namedtuple("FastArrays", (
    "enc_w", "enc_w_z", "enc_b", "enc_M", "enc_S", "h_z", "enc_tab", "enc_sat", "K", "Cc", "clip", "mwc",
    "D", "D_z", "x_re_z", "x_im_z", "x_re_S", "x_im_S", "y_M", "y_S", "y_z", "gelu_lut", "act_z", "mix_b",
    "glu_M", "glu_S", "glu_z", "sig_lut", "h_M", "h_S", "pool_M", "pool_S", "pool_z", "dec_w", "dec_w_z", "dec_b",
    "logits_M", "logits_S", "logits_z", "qrange", "x_dither"))


def state_fits_int32(a: dict, K: np.ndarray, Cc: np.ndarray, clip: np.ndarray) -> bool:
    """:func:`mode_loop_fits_int32` for a whole model, |u'| bounded by each layer's input code range."""
    q, hz = a["qrange"], a["h_z"]
    U = np.maximum(np.abs(q[R_H, 0] - hz[:-1]), np.abs(q[R_H, 1] - hz[:-1]))[:, None]  # (nl 1)
    return mode_loop_fits_int32(K, Cc, clip, U)


def mix_fits_int32(a: dict, mwc: np.ndarray) -> bool:
    """:func:`intssm.datapath.kernels.mixing_fits_int32` for a whole model, max|a'| from each layer's
    activation code range and zero point."""
    q, az = a["qrange"], a["act_z"]
    return mixing_fits_int32(mwc, np.maximum(np.abs(q[R_ACT, 0] - az), np.abs(q[R_ACT, 1] - az)))


def _folded(a: layout.IntArrays):
    """(K, Cc, clip, the arrays as a dict) of the fast kernel's mode loop, at int64."""
    K, Cc = fold_constants(a.A_re, a.A_im, a.A_re_z, a.A_im_z, a.B_re, a.B_im, a.B_z, a.C_re, a.C_im, a.C_z,
                           a.x_re_M, a.x_im_M)
    d = a._asdict()
    return K, Cc, mode_constants(d), d


def state_width(m) -> int:
    """32 if the fast kernel's mode loop provably stays in int32 for the model ``m`` (an
    :class:`~intssm.datapath.intmodel.IntModel`) (:func:`state_fits_int32`), else 64."""
    K, Cc, clip, d = _folded(layout.bundle(m.arrays))
    return 32 if state_fits_int32(d, K, Cc, clip) else 64


def _fast_arrays(a: layout.IntArrays, d_in: int, width: int | None) -> FastArrays:
    """The fast kernel's bundle: int32 mode loop and mixing weights where proved (``width`` None or
    32; 32 where not proved is an error), else int64."""
    K, Cc, clip, d = _folded(a)
    qr = a.qrange
    if d_in == 1:
        tab, sat = _encoder_table(a.enc_w, a.enc_w_z, a.enc_b, a.enc_M, a.enc_S, a.h_z, qr[R_H, 0], qr[R_H, 1])
    else:
        tab = sat = np.zeros((1, 1), np.int64)
    mwc = np.ascontiguousarray(a.mix_w - a.mix_w_z[..., None])  # centred mixing weights
    fits = width != 64 and state_fits_int32(d, K, Cc, clip)
    if width == 32 and not fits:
        raise IntssmError("this model's state update does not provably fit int32; use the 64-bit kernel")
    if fits:
        K, Cc, clip = K.astype(np.int32), Cc.astype(np.int32), clip.astype(np.int32)
    if width != 64 and mix_fits_int32(d, mwc):
        mwc = mwc.astype(np.int32)
    return FastArrays(**{k: d[k] for k in FastArrays._fields if k in d}, enc_tab=tab, enc_sat=sat, K=K, Cc=Cc,
                      clip=clip, mwc=mwc)


def simulate(m, P: np.ndarray, trace: bool = False, reference: bool = False, width: int | None = None,
             lengths: np.ndarray | None = None, pool_len: int | None = None):
    """Run the integer model ``m`` (an :class:`~intssm.datapath.intmodel.IntModel`: validated, so
    its bounds are proved) on input codes ``P`` (B, L, d_input) uint8, sequence b for its first
    ``lengths[b]`` steps (None: all L; a mean-pooling model needs all L).

    Returns (logit codes (B, d_output) int64, saturation counts (B, ``m.n_counters``) int64, trace) where
    trace = (x_re, x_im) codes (L, layers, H, N/2) of sequence 0 when ``trace`` is set, else None
    (steps from lengths[0] on stay 0).
    ``pool_len``: the length a mean-pooling model was quantized for (its ``seq_len``); with it, each
    sequence may have any length and gives the streaming readout after its steps (the pooling sum
    scaled by :func:`mean_rescale`: the C export's ``_logits`` after that many steps).
    The fast kernel runs its mode loop in int32 when :func:`state_fits_int32` proves it safe
    (``width=None``), or at the ``width`` given (64, or 32 where proved); the integers are the same.
    """
    from intssm.datapath.intmodel import require

    require(m, "simulate")
    if width not in (None, 32, 64):
        raise IntssmError(f"simulator width must be 32 or 64, got {width}")
    if not isinstance(P, np.ndarray) or P.dtype != np.uint8:
        raise TypeError(f"simulator input must be a uint8 array of raw pixels, got {getattr(P, 'dtype', type(P))}")
    if P.ndim != 3:
        raise IntssmError(f"simulator input must be (batch, length, features), got shape {P.shape}")
    if P.shape[2] != m.cfg.d_input:
        raise IntssmError(f"input has {P.shape[2]} features per step, the model expects {m.cfg.d_input}")
    mean_pool = m.mean_pool
    P = np.ascontiguousarray(P)
    Bsz = P.shape[0]
    if lengths is None:
        lengths = np.full(Bsz, P.shape[1], np.int64)
    lengths = np.ascontiguousarray(np.asarray(lengths).astype(np.int64))
    if lengths.shape != (Bsz,) or (Bsz and (lengths.min() < 1 or lengths.max() > P.shape[1])):
        raise IntssmError(f"lengths must be one value in 1..{P.shape[1]} per sequence, got shape {lengths.shape}")
    if pool_len is not None and (isinstance(pool_len, bool) or not isinstance(pool_len, (int, np.integer))
                                 or not 1 <= pool_len < 2**30):
        raise IntssmError(f"pool_len must be an integer in 1..2^30 - 1, got {pool_len!r}")
    if mean_pool and pool_len is None and Bsz and lengths.min() != P.shape[1]:
        raise IntssmError("a mean-pooling model runs every sequence for its full length; variable-length "
                          "data need a model with pool 'last'")
    nl = m.cfg.n_layers
    numba_setup()
    a = layout.bundle(m.arrays)
    logits = np.zeros((Bsz, a.dec_w.shape[0]), np.int64)
    cnt = np.zeros((Bsz, m.n_counters), np.int64)
    pl = np.int64(0 if pool_len is None else pool_len)
    if trace:
        _, H, N2 = a.A_re.shape
        tr = np.zeros((P.shape[1], nl, H, N2), np.int64)
        ti = np.zeros_like(tr)
        _run_traced(P[:1], lengths[:1], a, bool(mean_pool), pl, logits[:1], cnt[:1], tr, ti)
        return logits[:1], cnt[:1], (tr, ti)
    if reference:
        _run_batch(P, lengths, a, bool(mean_pool), pl, logits, cnt)
        return logits, cnt, None
    f = _fast_arrays(a, P.shape[2], width)
    if Bsz:
        order, start, count = blocks(lengths, lanes_for(Bsz, get_num_threads()))
        _run_blocks_fast(P, lengths, order, start, count, f, bool(mean_pool), pl, logits, cnt)
    return logits, cnt, None
