"""Fixed-point primitives of the integer datapath (numpy / Numba; no Torch).

Their Torch twins, of the same names with ``_t`` and the same semantics, are in
:mod:`intssm.training.fixedpoint_torch`.

Integers live in ``int64`` in the simulator and as exactly-representable integers in
``float64`` tensors in the Torch quantized model. Every site of the datapath is checked at build
time (:mod:`intssm.datapath.qspec`) so that its largest possible accumulator, rounding constant included,
stays below 2**53: then int64 never wraps and float64 never rounds, and the two agree bit for bit.

The only place where float scales turn into integers is :func:`quantize_multiplier`
(the role of TFLite's ``QuantizeMultiplier``); kernels never see a float.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from intssm.errors import IntssmError

#: Largest magnitude any accumulator (rounding constant included) may reach: float64's exact range.
EXACT_LIMIT = 2**53
#: Multipliers are unsigned and below 2**MULT_BITS (15-bit, like a 16-bit signed hardware multiplier).
MULT_BITS = 15
#: Shifts lie in [0, MAX_SHIFT].
MAX_SHIFT = 46


def allow_overlap_checks(n: int = 256) -> None:
    """Let LLVM's loop vectoriser emit up to ``n`` run-time array-overlap checks (default 8).

    Numba cannot tell LLVM that two arrays never overlap, so a loop that writes several arrays
    vectorises only behind run-time checks, one per pair of arrays that might overlap, and a loop
    that needs more checks than the threshold runs scalar. The checks cost a few comparisons per
    loop entry (the kernels keep their loops long: over a block of lanes or the batch); results
    are unchanged except for the reassociated float sums that ``fastmath`` already allows.
    This is a process-wide LLVM option: it affects only how loops compiled afterwards are
    vectorised, never what they compute.
    """
    import llvmlite.binding as llvm

    llvm.set_option("intssm", f"--runtime-memory-check-threshold={n}")
    llvm.set_option("intssm", f"--vectorize-memory-check-threshold={n}")



# ---------------------------------------------------------------- integer primitives (Numba) ---

@njit(cache=True, inline="always")
def rounding_rshift(v, s):
    """floor((v + 2**(s-1)) / 2**s): divide by 2**s, rounding half up (ties toward +inf).

    ``s = 0`` returns ``v``. Valid for ``0 <= s <= 62`` and ``|v| + 2**(s-1) < 2**63``; the
    datapath guarantees ``< 2**53``. Mirrors an arithmetic shift right after adding the rounding
    bit (ARM ``SRSHR``-style rounding is half-up too). Differs from gemmlowp's
    ``RoundingDivideByPOT``, which rounds ties away from zero, only at negative ties.
    Never saturates: the result magnitude is at most that of ``v`` (plus one).
    """
    return (v + ((np.int64(1) << s) >> 1)) >> s  # (1 << s) >> 1 is 2**(s-1), or 0 for s = 0: no branch


#: The dithered state rounding (``state_rounding = "dither"``, docs/datapath.md, step 2) adds, in
#: place of 2**(S-1), an offset read off a two-dimensional Weyl sequence: the 32-bit phase
#: w = (k WEYL_STEP + j WEYL_LANE) mod 2**32 of step k (from 0) and lane j (one per state part:
#: j = ((layer 2 + part) H + h) N/2 + n, part 0 for Re, 1 for Im), i.e. frac(k / phi + j sqrt 2).
#: No generator state: a 32-bit step phase (k WEYL_STEP mod 2**32, one add per step) is all a device keeps.
WEYL_STEP = 0x9E3779B9  # round(2**32 / golden ratio)
WEYL_LANE = 0x6A09E667  # floor(2**32 frac(sqrt 2))
WEYL_MASK = 0xFFFFFFFF


def weyl_lane_of(layer, part, H, h, N2, n):
    """The dither lane of layer ``layer``'s state part ``part`` (0: Re, 1: Im), channel ``h``, mode
    ``n``: ((2 layer + part) H + h) N/2 + n. Plain arithmetic: ints, numpy arrays or tensors."""
    return ((2 * layer + part) * H + h) * N2 + n


weyl_lane = njit(cache=True, inline="always")(weyl_lane_of)  # the same, inside the Numba kernels


@njit(cache=True, inline="always")
def weyl_offset(phase, j, s):
    """Dither offset of lane ``j`` at step phase ``phase`` (= k WEYL_STEP mod 2**32), shift ``s``:
    ((phase + j WEYL_LANE) mod 2**32) >> (32 - s), uniform-like in [0, 2**s); 0 for s = 0.
    Valid for 0 <= s <= 32 and 0 <= j < 2**31; exact in int64 (every operand < 2**63)."""
    return ((phase + j * np.int64(WEYL_LANE)) & np.int64(WEYL_MASK)) >> (np.int64(32) - s)


@njit(cache=True, inline="always")
def state_round_offset(dither, phase, j, s):
    """The state update's rounding offset for lane ``j`` at step phase ``phase``, shift ``s``:
    :func:`weyl_offset` with the dither, else 2**(s-1) (0 for s = 0: round half up)."""
    if dither:
        return weyl_offset(phase, j, s)
    return (np.int64(1) << s) >> 1


@njit(cache=True, inline="always")
def offset_rshift(v, d, s):
    """floor((v + d) / 2**s): the state's rounding shift with offset ``d`` in [0, 2**s).

    d = 2**(s-1) is :func:`rounding_rshift` (half up); d from :func:`weyl_offset` is dithered
    rounding (round up with probability frac(v / 2**s), over the sequence). Never saturates."""
    return (v + d) >> s


@njit(cache=True, inline="always")
def saturate(v, lo, hi):
    """min(max(v, lo), hi): clamp to the code range [lo, hi]. Returns (value, 1 if clamped else 0)."""
    if v < lo:
        return lo, 1
    if v > hi:
        return hi, 1
    return v, 0


@njit(cache=True, inline="always")
def requantize(acc, m, s, z, lo, hi):
    """clamp(rounding_rshift(acc * m, s) + z, lo, hi): rescale by m / 2**s, add zero point, saturate.

    ``m`` is a non-negative integer multiplier below 2**15, ``s`` in [0, 46]. A single rounding
    (TFLite's single-rounding ``MultiplyByQuantizedMultiplier`` is the same idea, with a 31-bit
    multiplier). Returns (code, 1 if saturated else 0).
    """
    return saturate(rounding_rshift(acc * m, s) + z, lo, hi)


# ----------------------------------------------------- width-generic ops (Numba intrinsics) ---
# Numba widens every integer product and shift to int64, which keeps LLVM from using 32-bit
# vector lanes: a vector holds twice as many int32 as int64, and AVX2 (unlike AVX-512DQ) has no
# int64 multiply at all, only a native int32 one.
# These emit one LLVM instruction at the operands' own width instead. They WRAP on overflow
# (two's complement), so a kernel may use them at 32 bits only where a bound proves that no
# operand, partial sum or product leaves int32 (see ``intssm.datapath.kernels.mode_loop_fits_int32``).

def _same_width_binop(llvm_op: str, doc: str):
    @intrinsic
    def op(typingctx, a, b):
        if not (isinstance(a, types.Integer) and a == b):
            return None
        return a(a, b), lambda context, builder, sig, args: getattr(builder, llvm_op)(args[0], args[1])

    op.__doc__ = doc
    return op


wmul = _same_width_binop("mul", "a * b at the operands' width, wrapping (no rounding, no saturation).")
wadd = _same_width_binop("add", "a + b at the operands' width, wrapping (no saturation).")
wsub = _same_width_binop("sub", "a - b at the operands' width, wrapping (no saturation).")
washr = _same_width_binop("ashr", "a >> s, arithmetic (floor division by 2**s) at a's width; needs 0 <= s < width.")


@intrinsic
def cast_like(typingctx, v, like):
    """``v`` (integer or bool) converted to the integer type of ``like`` (a scalar or an array's dtype):
    sign-extends or truncates; callers convert only values that fit."""
    to = like.dtype if isinstance(like, types.Array) else like
    if not isinstance(to, types.Integer) or not isinstance(v, (types.Integer, types.Boolean)):
        return None
    return to(v, like), lambda context, builder, sig, args: context.cast(builder, args[0], sig.args[0], to)


def round_half_up(v: np.ndarray) -> np.ndarray:
    """Nearest integer, ties toward +inf, exact for every float64: floor(v) + (v - floor(v) >= 0.5).

    (``floor(v + 0.5)`` is not: for v = 0.49999999999999994 the sum rounds up to 1.0.)
    ``v - floor(v)`` is exact in float64, so the comparison is too.
    """
    v = np.asarray(v, dtype=np.float64)
    f = np.floor(v)
    return f + ((v - f) >= 0.5)


# ------------------------------------------------------------ float -> integer, one place ---

def quantize_multiplier(ratios: np.ndarray, site: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Integer multipliers M (T, C) and one shift S (C,) with M[t, c] / 2**S[c] ~= ratios[t, c].

    For each output channel c the largest ratio sets the shift so that its multiplier lies in
    [2**14, 2**15); the other terms share that shift (one rounding per output). Ratios must be
    finite and >= 0; a largest ratio of 2**15 or more cannot be represented and is an error.
    Relative precision of the largest term is 2**-15; a shift is capped at ``MAX_SHIFT``.
    """
    r = np.asarray(ratios, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError("ratios must be (terms, channels)")
    if not np.isfinite(r).all() or (r < 0).any():
        raise IntssmError(f"datapath site {site}: scale ratios must be finite and non-negative")
    rmax = r.max(axis=0)
    S = np.empty(r.shape[1], dtype=np.int64)
    for c, v in enumerate(rmax):
        if v <= 0:
            S[c] = MAX_SHIFT
            continue
        e = math.floor(math.log2(v))
        s = (MULT_BITS - 1) - e
        if s < 0:
            raise IntssmError(f"datapath site {site}: scale ratio {v:.3g} too large for a {MULT_BITS}-bit multiplier")
        S[c] = min(s, MAX_SHIFT)
    M = round_half_up(r * np.exp2(S.astype(np.float64))[None, :]).astype(np.int64)
    over = M >= 2**MULT_BITS  # rounding up to 2**15: halve both
    if over.any():
        for c in np.nonzero(over.any(axis=0))[0]:
            if S[c] == 0:
                raise IntssmError(f"datapath site {site}: scale ratio {rmax[c]:.6g} rounds to 2**{MULT_BITS}, "
                                  f"too large for a {MULT_BITS}-bit multiplier")
            S[c] -= 1
            M[:, c] = round_half_up(r[:, c] * 2.0 ** S[c]).astype(np.int64)
    return M, S
