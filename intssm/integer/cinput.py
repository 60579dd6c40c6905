"""The input quantizer on the device: float32 sensor readings to the datapath's input codes, in C,
exactly the codes :meth:`intssm.datapath.inputq.InputQuant.codes` gives on the host.

The host's quantizer is ``p = clamp(round_half_up((u - lo) / s), 0, 2^b - 1)`` in float64 on the
float32 reading ``u``. A device need not repeat that arithmetic: ``p`` never decreases as ``u``
grows (each float64 operation is monotone, the divisor positive), so it is the number of
thresholds ``t_1 <= ... <= t_qmax`` at or below ``u``, where ``t_k`` is the smallest float32 whose
code is at least ``k``. :func:`thresholds` finds each ``t_k`` by bisection over the float32 values,
evaluating the host's own quantizer, so the tables are exact by construction; the C compares a
reading with them as integers (:func:`order_key`: the float32 bit pattern mapped to an unsigned
integer of the same order), which needs no FPU, or could compare floats on one that has it.

Readings are ordinary float32 values, infinities included (-inf gives 0, +inf the top code).
NaN is not a reading: its code is unspecified.

A sensor that delivers integer ADC codes ``a`` (int16) with a scale ``s_j`` per channel (its
reading is the float32 product ``u = fl32(a * s_j)``, what ``(float)a * s`` computes in single
precision) gets the same treatment on the codes themselves: :func:`adc_thresholds` holds the
smallest ``a`` whose reading's code is at least ``k``, found by evaluating all 65,536 codes.
"""

from __future__ import annotations

import numpy as np

from intssm.datapath.inputq import InputQuant
from intssm.errors import IntssmError

#: Order keys of -inf and +inf: every non-NaN float32 lies between them.
KEY_NEG_INF, KEY_POS_INF = 0x007FFFFF, 0xFF800000


def order_key(u) -> np.ndarray:
    """uint32 keys of float32 values ``u`` with key(a) < key(b) exactly when a < b (and -0 as +0):
    the sign bit set, the bits inverted; else the sign bit added."""
    b = np.asarray(u, np.float32).view(np.uint32).copy()
    b[b == 0x80000000] = 0
    return np.where(b & 0x80000000, ~b, b | 0x80000000).astype(np.uint32)


def from_key(k) -> np.ndarray:
    """The float32 values of order keys ``k`` (the inverse of :func:`order_key`)."""
    k = np.asarray(k, np.uint32)
    return np.where(k & 0x80000000, k & 0x7FFFFFFF, ~k).astype(np.uint32).view(np.float32)


def thresholds(iq: InputQuant) -> np.ndarray:
    """(d, qmax) uint32: the order key of the smallest float32 whose code in channel j is at least
    k + 1 (:meth:`InputQuant.codes`, the host's own arithmetic), for every channel and code."""
    d, q = len(iq.lo), iq.qmax
    want = np.arange(1, q + 1)[:, None]  # (q 1): code k + 1
    lo = np.full((q, d), KEY_NEG_INF, np.int64)  # invariant: code(lo) < want <= code(hi)
    hi = np.full((q, d), KEY_POS_INF, np.int64)
    while (hi - lo > 1).any():
        mid = (lo + hi) // 2
        with np.errstate(invalid="ignore"):  # round_half_up(+-inf) computes inf - inf on its way to +-inf
            code = iq.codes(from_key(mid)[None])[0].astype(np.int64)  # (q d)
        up = code >= want
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid)
    return np.ascontiguousarray(hi.T.astype(np.uint32))


#: The ADC codes the integer input path takes: int16.
ADC_MIN, ADC_MAX = -(2**15), 2**15 - 1


def adc_readings(adc_scale: np.ndarray) -> np.ndarray:
    """(65536, d) float32: the reading fl32(a * s_j) of every int16 code a, for every channel's scale."""
    a = np.arange(ADC_MIN, ADC_MAX + 1, dtype=np.float32)[:, None]  # every int16 is a float32 exactly
    return (a * np.asarray(adc_scale, np.float32)[None, :]).astype(np.float32)


def adc_thresholds(iq: InputQuant, adc_scale: np.ndarray) -> np.ndarray:
    """(d, qmax) int32: the smallest int16 ADC code whose reading (:func:`adc_readings`) has a code
    of at least k + 1 in channel j, or 2^15 where none has."""
    s = np.asarray(adc_scale, np.float64)
    if s.shape != iq.lo.shape or not (np.isfinite(s).all() and (s > 0).all()) or not np.array_equal(s, s.astype(np.float32)):
        raise IntssmError(f"the ADC scale needs one positive float32 value per input channel ({len(iq.lo)}), got {adc_scale!r}")
    with np.errstate(invalid="ignore"):
        codes = iq.codes(adc_readings(s)[None])[0].astype(np.int64)  # (65536 d), non-decreasing down each column
    k = np.arange(1, iq.qmax + 1)
    idx = np.stack([np.searchsorted(codes[:, j], k, side="left") for j in range(codes.shape[1])])  # first a with code >= k
    return (idx + ADC_MIN).astype(np.int32)


def codes_from_thresholds(thr: np.ndarray, u: np.ndarray) -> np.ndarray:
    """What the generated C computes: per channel j, the number of ``thr[j]`` at or below
    order_key(u_j); ``u`` (..., d) float32 -> uint8 codes."""
    k = order_key(u)
    out = np.empty(k.shape, np.uint8)
    for j in range(thr.shape[0]):
        out[..., j] = np.searchsorted(thr[j], k[..., j], side="right")
    return out


def c_source(ns: str, thr: np.ndarray, adc: np.ndarray | None = None, adc_scale=None) -> str:
    """The C input path of an export with prefix ``ns``: the threshold tables and ``ns_input_codes``
    (and, with ADC thresholds, ``ns_input_codes_adc``)."""
    from intssm.integer.ctext import c_initializer

    d, q = thr.shape
    NS = ns.upper()
    init = c_initializer(thr, fmt=lambda v: f"{int(v):#010x}u", per_line=8)
    return _float_source(ns, NS, d, q, init) + ("" if adc is None else _adc_source(ns, NS, adc, adc_scale))


def _adc_source(ns: str, NS: str, adc: np.ndarray, adc_scale) -> str:
    from intssm.integer.ctext import c_initializer

    d, q = adc.shape
    scales = ", ".join(f"{float(v):.9g}" for v in adc_scale)
    return f"""
/* ---- the same from int16 ADC codes a, whose readings are fl32(a * s_j), s = ({scales}):
 * adc_thr[j][k] is the smallest code whose reading's code in channel j is at least k + 1 (2^15:
 * none). {d} x {q} x 4 = {4 * d * q} bytes. */
INTSSM_TABLE static const int32_t adc_thr[{d}][{q}] = {c_initializer(adc, per_line=12)};

void {ns}_input_codes_adc(const int16_t *a, uint8_t *p)
{{
    int j;
    for (j = 0; j < {NS}_D_IN; ++j) {{
        const int32_t *t = adc_thr[j];
        const int32_t v = a[j];
        uint32_t lo = 0, hi = {q};
        while (lo < hi) {{
            const uint32_t mid = (lo + hi) >> 1;
            if (t[mid] <= v)
                lo = mid + 1;
            else
                hi = mid;
        }}
        p[j] = (uint8_t)lo;
    }}
}}
"""


def _float_source(ns: str, NS: str, d: int, q: int, init: str) -> str:
    return f"""
/* ---- the input quantizer on the device: float32 readings -> input codes (docs/datapath.md,
 * "Float inputs on a device"). input_thr[j][k] is the order key of the smallest float32 whose
 * code in channel j is at least k + 1; a reading's code is the number of keys at or below its own.
 * {d} x {q} x 4 = {4 * d * q} bytes. */
INTSSM_TABLE static const uint32_t input_thr[{d}][{q}] = {init};

/* The order key of a float32's bits: a < b exactly when key(a) < key(b); -0 as +0. */
static uint32_t order_key(uint32_t b)
{{
    if (b == UINT32_C(0x80000000))
        b = 0;
    return (b & UINT32_C(0x80000000)) ? ~b : (b | UINT32_C(0x80000000));
}}

void {ns}_input_codes(const float *u, uint8_t *p)
{{
    int j;
    for (j = 0; j < {NS}_D_IN; ++j) {{
        union {{ float f; uint32_t b; }} v;  /* the reading's bits (C99 6.5.2.3: a union member read) */
        const uint32_t *t = input_thr[j];
        uint32_t lo = 0, hi = {q}, key;
        v.f = u[j];
        key = order_key(v.b);
        while (lo < hi) {{  /* the first threshold above key: binary search over the sorted keys */
            const uint32_t mid = (lo + hi) >> 1;
            if (t[mid] <= key)
                lo = mid + 1;
            else
                hi = mid;
        }}
        p[j] = (uint8_t)lo;
    }}
}}
"""
