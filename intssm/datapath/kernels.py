"""Integer kernels shared by the two fast executions of the state update: the simulator's fast
kernel (:mod:`intssm.integer.sim`) and QAT's fused scan and pointwise kernels (:mod:`intssm.training.scan`,
:mod:`intssm.training.pointwise`). Each follows docs/datapath.md on centred codes; the simulator's
reference kernel (``_run_one``) does not use them, so the tests compare two independent codes.

Also the explicit process set-up the Numba kernels need (:func:`numba_setup`), and the int32
proof of the mode loop (:func:`mode_loop_fits_int32`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from intssm.datapath.fixedpoint import cast_like, state_round_offset, wadd, washr, wmul, wsub
from intssm.datapath.layout import R_XIM, R_XRE

#: Columns of the per-channel mode-loop constants (:func:`mode_constants`): centred clip bounds of
#: x_re and x_im, the largest rounding offsets, the shifts.
CL_LO_R, CL_HI_R, CL_LO_I, CL_HI_I, CL_OFF_R, CL_OFF_I, CL_S_R, CL_S_I = range(8)

_SET_UP = False


def numba_setup() -> None:
    """Process-wide settings for intssm's Numba kernels; called by every function that launches one
    (idempotent, before the first launch).

    * Numba's threading layer is ``workqueue``: Torch and Numba's OpenMP layer would share libgomp's
      global thread count; the workqueue layer keeps Numba's threads out of Torch's way.
    * LLVM may emit up to 256 run-time array-overlap checks per loop
      (:func:`intssm.datapath.fixedpoint.allow_overlap_checks`), so that a loop over several arrays
      still vectorises. Neither setting changes what any kernel computes.
    """
    global _SET_UP
    if _SET_UP:
        return
    from numba import config

    from intssm.datapath.fixedpoint import allow_overlap_checks

    config.THREADING_LAYER = "workqueue"
    allow_overlap_checks()
    _SET_UP = True


def max_offsets(Sr: np.ndarray, Si: np.ndarray, dither: bool) -> tuple[np.ndarray, np.ndarray]:
    """Largest rounding offset of the state update for shifts S: 2**(S-1) (0 for S = 0) when
    rounding half up, 2**S - 1 with the dither (fixedpoint.weyl_offset)."""
    if dither:
        return (1 << Sr) - 1, (1 << Si) - 1
    return (1 << Sr) >> 1, (1 << Si) >> 1


def mode_constants(a: dict) -> np.ndarray:
    """(layers, H, 8) per-channel constants of the mode loop, columns ``CL_*``: centred clip bounds of
    x_re and x_im (lo_r, hi_r, lo_i, hi_i), the largest rounding offsets (:func:`max_offsets`; for
    the int32 bound) and the shifts S_r, S_i."""
    q = a["qrange"]
    zr, zi, Sr, Si = a["x_re_z"], a["x_im_z"], a["x_re_S"], a["x_im_S"]
    orr, ori = max_offsets(Sr, Si, bool(a["x_dither"][0]))
    return np.ascontiguousarray(np.stack([q[R_XRE, 0] - zr, q[R_XRE, 1] - zr, q[R_XIM, 0] - zi, q[R_XIM, 1] - zi,
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
    Xr = np.maximum(np.abs(clip[..., CL_LO_R]), np.abs(clip[..., CL_HI_R]))[..., None]  # (..., 1)
    Xi = np.maximum(np.abs(clip[..., CL_LO_I]), np.abs(clip[..., CL_HI_I]))[..., None]
    Ka = np.abs(K)
    re = Ka[..., 0, :] * Xr + Ka[..., 1, :] * Xi + Ka[..., 2, :] * U + clip[..., CL_OFF_R, None]
    im = Ka[..., 3, :] * Xi + Ka[..., 4, :] * Xr + Ka[..., 5, :] * U + clip[..., CL_OFF_I, None]
    out = max((np.abs(Cc[..., 0, :]).sum(-1) * Xr[..., 0]).max(), (np.abs(Cc[..., 1, :]).sum(-1) * Xi[..., 0]).max())
    return bool(re.max() < lim and im.max() < lim and out < lim and clip[..., CL_S_R:].max() < 32)


def mixing_fits_int32(W: np.ndarray, amax) -> bool:
    """True if the mixing sums sum_h W'[..., j, h] a'[h] (bias excluded) provably never leave int32:
    sum_h |W'[j, h]| max|a'| < 2**31, which bounds every partial sum in any order. ``W`` (..., 2H, H)
    centred weights, ``amax`` the bound on |a'| (broadcast against ``...``). The simulator (per model,
    a' from the activation code range) and QAT's fused tail (per call, a' over the GELU table) both
    decide with this."""
    amax = np.asarray(amax, dtype=np.int64)[..., None]
    return bool(W.size == 0 or (np.abs(W).sum(-1) * amax).max() < 2**31)


@njit(cache=True, inline="always")
def state_update(k0, k1, k2, k3, k4, k5, xr, xi, u, rr, ri, sr, si):
    """Step 2 of docs/datapath.md on centred codes, before the clip, at the operands' width:
    (rshift(K0 xr - K1 xi + K2 u + rr, Sr), rshift(K3 xi + K4 xr + K5 u + ri, Si)) with K the
    folded constants of :func:`intssm.integer.sim.fold_constants` and rr, ri the rounding offsets (2**(S-1), 0 for
    S = 0; or the dither's :func:`~intssm.datapath.fixedpoint.weyl_offset`). """
    vr = washr(wadd(wadd(wsub(wmul(k0, xr), wmul(k1, xi)), wmul(k2, u)), rr), sr)
    vi = washr(wadd(wadd(wadd(wmul(k3, xi), wmul(k4, xr)), wmul(k5, u)), ri), si)
    return vr, vi


@njit(cache=True, inline="always")
def clip_counted(v, lo, hi):
    """(clamp(v, lo, hi), 1 if v lay outside [lo, hi] else 0), both at v's width: the per-step
    state clip and what its saturation counter adds (branch-free, so loops over lanes vectorise)."""
    return min(max(v, lo), hi), cast_like((v < lo) | (v > hi), v)


@njit(cache=True, inline="always")
def fill_state_offsets(out, dither, phase, j0, s):
    """out[n] = the rounding offset of lane j0 + n at step phase ``phase`` (``state_round_offset``),
    at ``out``'s width: one channel's modes."""
    for n in range(out.shape[0]):
        out[n] = cast_like(state_round_offset(dither, phase, j0 + n, s), out)


@njit(cache=True, inline="always")
def output_acc(t1, t2, Du, m):
    """Step 3's accumulator M0 t1 - M1 t2 + M2 D' u' (t1 = sum_n C_re' x_re', t2 = sum_n C_im' x_im',
    Du = D' u'; ``m`` the site's three multipliers)."""
    return t1 * m[0] - t2 * m[1] + Du * m[2]


@njit(cache=True, inline="always")
def residual_acc(u, gc, sg, m0, m1):
    """Step 7's accumulator M0 u' + M1 (g' sigma): the residual input u' = h - z_h plus the gated
    branch (g' = g[h] - z_glu, sigma = LUT_sig code)."""
    return u * m0 + (gc * sg) * m1
