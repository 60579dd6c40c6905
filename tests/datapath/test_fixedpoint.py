"""intssm.datapath.fixedpoint against the plain-Python big-integer references of tests/naive.py.

Every comparison of integers is ``==`` (or an exact rational comparison): the datapath's claim is
bit-exactness, so a tolerance would hide exactly the bugs these tests are for.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from numba import njit
from hypothesis import strategies as st

import naive
from intssm.errors import IntssmError
from intssm.datapath.fixedpoint import (
    WEYL_LANE,
    WEYL_STEP,
    offset_rshift,
    weyl_offset,
    EXACT_LIMIT,
    MAX_SHIFT,
    MULT_BITS,
    quantize_multiplier,
    requantize,
    round_half_up,
    rounding_rshift,
    saturate,
)
from intssm.training.fixedpoint_torch import offset_rshift_t, round_half_up_t, rounding_rshift_t, weyl_offset_t

T64 = torch.float64


def _half(s: int) -> int:
    return 2 ** (s - 1) if s > 0 else 0


def signed_range(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


#: (bits, v) with v anywhere in the signed range of that width
width_and_value = st.integers(2, 32).flatmap(lambda b: st.tuples(st.just(b), st.integers(*signed_range(b))))


def shift_and_value_below_exact(max_shift: int = MAX_SHIFT):
    """(s, v) with |v| + 2**(s-1) < 2**53: the range where float64 twins are exact too."""
    def values(s):
        lim = EXACT_LIMIT - 1 - _half(s)
        return st.tuples(st.just(s), st.integers(-lim, lim))
    return st.integers(0, max_shift).flatmap(values)


def twin(vs, ss) -> list[int]:
    """rounding_rshift_t on float64 tensors of values and shifts, back as Python ints."""
    out = rounding_rshift_t(torch.tensor([float(v) for v in vs], dtype=T64), torch.tensor([float(s) for s in ss], dtype=T64))
    assert out.dtype == T64
    res = out.tolist()
    assert all(r == math.floor(r) for r in res)
    return [int(r) for r in res]


# ------------------------------------------------------------------------- rounding_rshift ---


def test_rounding_rshift_documented_examples():
    """Half-up: ties go toward +inf (-1.5 -> -1, 1.5 -> 2), s = 0 is the identity."""
    assert rounding_rshift(-3, 1) == -1
    assert rounding_rshift(3, 1) == 2
    assert rounding_rshift(-1, 1) == 0
    assert rounding_rshift(1, 1) == 1
    assert rounding_rshift(-6, 2) == -1  # -1.5
    assert rounding_rshift(6, 2) == 2  # 1.5
    assert rounding_rshift(-5, 2) == -1  # -1.25
    assert rounding_rshift(-7, 2) == -2  # -1.75
    assert rounding_rshift(12345, 0) == 12345
    assert rounding_rshift(-12345, 0) == -12345
    assert naive.rounding_rshift(-3, 1) == -1 and naive.rounding_rshift(3, 1) == 2


@given(width_and_value, st.integers(0, 30))
def test_rounding_rshift_narrow_widths(bv, s):
    """For v of any width 2..32 bits and shifts 0..30, rounding_rshift equals floor((v + 2**(s-1)) / 2**s)."""
    _, v = bv
    assert rounding_rshift(v, s) == naive.rounding_rshift(v, s)


def test_rounding_rshift_width_extremes():
    """INT_MIN, INT_MAX (and their neighbours, -1, 0, 1) of every width 2..32 at every shift 0..30."""
    for bits in range(2, 33):
        lo, hi = signed_range(bits)
        for v in sorted({lo, lo + 1, hi - 1, hi, -1, 0, 1}):
            for s in range(0, 31):
                assert rounding_rshift(v, s) == naive.rounding_rshift(v, s), (bits, v, s)


@given(st.integers(-(2**52), 2**52), st.integers(0, MAX_SHIFT))
def test_rounding_rshift_wide(v, s):
    """Accumulator-sized v (up to +-2**52) with shifts up to 46 match the big-integer reference."""
    assert rounding_rshift(v, s) == naive.rounding_rshift(v, s)


@given(st.integers(1, MAX_SHIFT).flatmap(lambda s: st.tuples(st.just(s), st.integers(-(2 ** (52 - s)), 2 ** (52 - s) - 1))))
def test_rounding_rshift_ties_go_up(sk):
    """Exact ties v = k 2**s + 2**(s-1) (k of either sign) round to k + 1, i.e. toward +inf."""
    s, k = sk
    v = k * 2**s + 2 ** (s - 1)
    assert naive.rounding_rshift(v, s) == k + 1
    assert rounding_rshift(v, s) == k + 1
    assert twin([v], [s]) == [k + 1]


def test_rounding_rshift_ties_at_every_shift():
    """At every valid shift 1..61, the ties around -3..3 go toward +inf (k + 1), never away from zero."""
    for s in range(1, 62):
        for k in range(-3, 3):
            v = k * 2**s + 2 ** (s - 1)
            if abs(v) + 2 ** (s - 1) >= 2**63:
                continue
            assert rounding_rshift(v, s) == k + 1, (k, s)
            assert naive.rounding_rshift(v, s) == k + 1


def _near_powers_of_two():
    """v = +-(2**p + d), d in -2..2, p in 0..52 (gemmlowp-style edge values), with every shift 0..46."""
    vs, ss = [], []
    for p in range(0, 53):
        for d in (-2, -1, 0, 1, 2):
            for sign in (1, -1):
                v = sign * (2**p + d)
                for s in range(0, MAX_SHIFT + 1):
                    vs.append(v)
                    ss.append(s)
    return vs, ss


def test_rounding_rshift_near_powers_of_two():
    """+-1 and +-2 around every power of two up to 2**52, at every shift 0..46: Numba, Torch twin and reference agree."""
    vs, ss = _near_powers_of_two()
    ref = [naive.rounding_rshift(v, s) for v, s in zip(vs, ss)]
    got = [rounding_rshift(v, s) for v, s in zip(vs, ss)]
    assert got == ref
    ok = [i for i, (v, s) in enumerate(zip(vs, ss)) if abs(v) + _half(s) < EXACT_LIMIT]
    assert len(ok) == len(vs)  # every one of these is within the float64-exact range
    assert twin(vs, ss) == ref


# ---------------------------------------------------------------------------------- saturate ---


@given(st.integers(-(2**62), 2**62), st.integers(-(2**62), 2**62), st.integers(-(2**62), 2**62))
def test_saturate(v, a, b):
    """saturate(v, lo, hi) is (min(max(v, lo), hi), 1 iff clamped); hitting a bound exactly is not a clamp."""
    lo, hi = min(a, b), max(a, b)
    assert saturate(v, lo, hi) == naive.saturate(v, lo, hi)
    assert saturate(lo, lo, hi) == (lo, 0)
    assert saturate(hi, lo, hi) == (hi, 0)
    assert saturate(lo, lo, lo) == (lo, 0)
    assert saturate(v, v, v) == (v, 0)


def test_saturate_extremes():
    """Clamping at the edges of every width 2..32: one below lo and one above hi are flagged, lo and hi are not."""
    for bits in range(2, 33):
        lo, hi = signed_range(bits)
        for v in (lo - 1, lo, lo + 1, -1, 0, 1, hi - 1, hi, hi + 1, -(2**62), 2**62):
            got = saturate(v, lo, hi)
            assert got == naive.saturate(v, lo, hi), (bits, v)
        assert saturate(lo - 1, lo, hi) == (lo, 1)
        assert saturate(hi + 1, lo, hi) == (hi, 1)


# ------------------------------------------------------------------------------ requantize ---


@st.composite
def requantize_args(draw):
    m = draw(st.integers(0, 2**MULT_BITS - 1))
    s = draw(st.integers(0, MAX_SHIFT))
    lim = (EXACT_LIMIT - 1 - _half(s)) // max(m, 1)  # |acc m| + 2**(s-1) < 2**53
    acc = draw(st.one_of(st.integers(-lim, lim), st.sampled_from([-lim, lim, 0, -1, 1])))
    z = draw(st.integers(-(2**16), 2**16))
    a = draw(st.integers(-(2**31), 2**31))
    b = draw(st.integers(-(2**31), 2**31))
    return acc, m, s, z, min(a, b), max(a, b)


@given(requantize_args())
def test_requantize(args):
    """requantize = clamp(rounding_rshift(acc m, s) + z, lo, hi) with its saturation flag, for |acc m| + 2**(s-1) < 2**53."""
    acc, m, s, z, lo, hi = args
    assert abs(acc * m) + _half(s) < EXACT_LIMIT
    assert requantize(acc, m, s, z, lo, hi) == naive.requantize(acc, m, s, z, lo, hi)


def test_requantize_extremes():
    """The largest accumulators allowed at every shift, with the largest multiplier, into 8- and 16-bit codes."""
    m = 2**MULT_BITS - 1
    for s in range(0, MAX_SHIFT + 1):
        lim = (EXACT_LIMIT - 1 - _half(s)) // m
        for acc in (-lim, -lim + 1, -1, 0, 1, lim - 1, lim):
            for z, lo, hi in ((0, -128, 127), (-7, -32768, 32767), (100, 0, 255)):
                assert requantize(acc, m, s, z, lo, hi) == naive.requantize(acc, m, s, z, lo, hi), (acc, s, z)


# --------------------------------------------------------------------------- Torch twins ---


@given(st.lists(shift_and_value_below_exact(), min_size=1, max_size=64))
def test_rounding_rshift_t_matches_reference(pairs):
    """The float64 twin (tensor of shifts) gives the reference integers whenever |v| + 2**(s-1) < 2**53; so does ste=True."""
    ss = [s for s, _ in pairs]
    vs = [v for _, v in pairs]
    ref = [naive.rounding_rshift(v, s) for v, s in zip(vs, ss)]
    assert twin(vs, ss) == ref
    assert [rounding_rshift(v, s) for v, s in zip(vs, ss)] == ref
    v_t = torch.tensor([float(v) for v in vs], dtype=T64, requires_grad=True)
    s_t = torch.tensor([float(s) for s in ss], dtype=T64)
    out = rounding_rshift_t(v_t, s_t, ste=True)
    assert [int(r) for r in out.tolist()] == ref
    out.sum().backward()  # straight-through: gradient of v 2**-s
    assert v_t.grad.tolist() == [2.0**-s for s in ss]


def test_rounding_rshift_t_extremes():
    """At every shift 0..46 the largest |v| with |v| + 2**(s-1) < 2**53, and the ties next to it, are exact."""
    vs, ss = [], []
    for s in range(0, MAX_SHIFT + 1):
        lim = EXACT_LIMIT - 1 - _half(s)
        cand = [-lim, lim, -lim + 1, lim - 1, 0, -1, 1]
        if s > 0:
            k = (lim - _half(s)) // 2**s
            cand += [k * 2**s + _half(s), -k * 2**s + _half(s), -(k + 1) * 2**s + _half(s)]
        for v in cand:
            if abs(v) + _half(s) < EXACT_LIMIT:
                vs.append(v)
                ss.append(s)
    assert twin(vs, ss) == [naive.rounding_rshift(v, s) for v, s in zip(vs, ss)]


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(-(2**50), 2**50)), min_size=1, max_size=64))
def test_round_half_up_t_dyadic(jk):
    """round_half_up_t(k / 2**j) = floor(k / 2**j + 1/2) exactly (ties toward +inf) for dyadic values where v + 0.5 is exact."""
    v = torch.tensor([k * 2.0**-j for j, k in jk], dtype=T64)
    assert [Fraction(x) for x in v.tolist()] == [Fraction(k, 2**j) for j, k in jk]  # the inputs are exact
    got = round_half_up_t(v)
    assert got.dtype == T64
    assert [int(r) for r in got.tolist()] == [naive.rounding_rshift(k, j) for j, k in jk]
    vg = v.clone().requires_grad_(True)
    ste = round_half_up_t(vg, ste=True)
    assert ste.tolist() == got.tolist()
    ste.sum().backward()
    assert vg.grad.tolist() == [1.0] * len(jk)


def test_round_half_up_t_ties():
    """Ties round toward +inf: -2.5 -> -2, -1.5 -> -1, -0.5 -> 0, 0.5 -> 1, 1.5 -> 2, 2.5 -> 3."""
    v = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -0.25, 0.25, -0.75, 0.75], dtype=T64)
    assert round_half_up_t(v).tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, -1.0, 1.0]


def _exact_round_half_up(x: float) -> int:
    """floor(x + 1/2) in exact rational arithmetic (Fraction(x) is the double's exact value)."""
    return math.floor(Fraction(x) + Fraction(1, 2))


#: finite doubles of every magnitude, plus the classic trap just below 0.5 and its neighbours
any_double = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-2.0**60, max_value=2.0**60, allow_nan=False),
    st.sampled_from([float(np.nextafter(0.5, 0.0)), float(np.nextafter(-0.5, -1.0)), float(np.nextafter(0.5, 1.0)),
                     float(np.nextafter(1.5, 0.0)), 2.0**52 + 1, -(2.0**52) - 1, 2.0**53 - 1, 0.0, -0.0]),
)


@given(st.lists(any_double, min_size=1, max_size=32))
def test_round_half_up_t_any_double(vs):
    """round_half_up_t is the exact nearest integer (ties toward +inf) of every finite double, not float floor(v + 0.5)."""
    got = round_half_up_t(torch.tensor(vs, dtype=T64))
    assert [int(r) for r in got.tolist()] == [_exact_round_half_up(v) for v in vs]


def test_round_half_up_t_just_below_half():
    """The largest double below 0.5 is not a tie and rounds to 0 (float floor(v + 0.5) would give 1)."""
    v = float(np.nextafter(0.5, 0.0))
    assert Fraction(v) < Fraction(1, 2)
    assert math.floor(v + 0.5) == 1  # the trap
    assert round_half_up_t(torch.tensor([v], dtype=T64)).tolist() == [0.0]
    assert round_half_up_t(torch.tensor([2.0**52 + 1], dtype=T64)).tolist() == [2.0**52 + 1]  # odd integers stay


# ------------------------------------------------------------------------- round_half_up ---


@given(st.lists(any_double, min_size=1, max_size=32))
def test_round_half_up_any_double(vs):
    """The numpy round_half_up (used by quantize_multiplier) is exact for every finite double and agrees with its Torch twin."""
    got = round_half_up(np.array(vs, dtype=np.float64))
    assert got.dtype == np.float64
    ref = [_exact_round_half_up(v) for v in vs]
    assert [int(r) for r in got.tolist()] == ref
    assert round_half_up_t(torch.tensor(vs, dtype=T64)).tolist() == got.tolist()


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(-(2**50), 2**50)), min_size=1, max_size=64))
def test_round_half_up_dyadic(jk):
    """round_half_up(k / 2**j) = rounding_rshift(k, j): the float rounding and the integer shift agree."""
    got = round_half_up(np.array([k * 2.0**-j for j, k in jk]))
    assert [int(r) for r in got.tolist()] == [naive.rounding_rshift(k, j) for j, k in jk]
    assert round_half_up(np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])).tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0]


# ------------------------------------------------------------------- quantize_multiplier ---

#: positive ratios spread over 1e-12 .. 3e4, log-uniformly
ratio = st.floats(min_value=-12.0, max_value=math.log10(3e4)).map(lambda x: 10.0**x)


def _check_multipliers(r: np.ndarray, M: np.ndarray, S: np.ndarray):
    T, C = r.shape
    assert M.shape == (T, C) and S.shape == (C,)
    assert M.dtype == np.int64 and S.dtype == np.int64
    assert (M >= 0).all() and (M < 2**MULT_BITS).all()
    assert (S >= 0).all() and (S <= MAX_SHIFT).all()
    for c in range(C):
        s = int(S[c])
        for t in range(T):
            exact = Fraction(float(r[t, c])) * 2**s
            # M is the nearest integer to r 2**S: |M / 2**S - r| <= 2**-S / 2, compared exactly
            assert abs(Fraction(int(M[t, c])) - exact) <= Fraction(1, 2), (t, c, r[t, c], M[t, c], s)
        tmax = int(np.argmax(r[:, c]))
        if s < MAX_SHIFT:
            # the largest ratio uses the top bit ...
            assert int(M[tmax, c]) >= 2 ** (MULT_BITS - 1), (c, r[:, c], M[:, c], s)
            # ... and S is the largest shift at which it still fits: one more would round to 2**15
            nxt = Fraction(float(r[tmax, c])) * 2 ** (s + 1)
            assert math.floor(nxt + Fraction(1, 2)) >= 2**MULT_BITS
        assert int(M[tmax, c]) == int(M[:, c].max())


@given(st.integers(1, 3).flatmap(lambda T: st.integers(1, 4).flatmap(
    lambda C: st.lists(st.lists(st.one_of(ratio, st.just(0.0)), min_size=C, max_size=C), min_size=T, max_size=T))))
def test_quantize_multiplier(rows):
    """M < 2**15, S in [0, 46], M the nearest integer to r 2**S, and the largest ratio of each column has M >= 2**14 unless S = 46."""
    r = np.array(rows, dtype=np.float64)
    M, S = quantize_multiplier(r, "test")
    _check_multipliers(r, M, S)


def test_quantize_multiplier_powers_of_two_and_edges():
    """Exact powers of two 2**-45 .. 2**14 give M = 2**14 (or the capped shift); values near 2**15 and 2**14 stay in range."""
    for k in range(-45, 15):
        M, S = quantize_multiplier(np.array([[2.0**k]]))
        s = min(14 - k, MAX_SHIFT)
        assert int(S[0]) == s and int(M[0, 0]) == 2 ** (k + s), k
    edge = [2.0**15 - 0.5 - 2**-20, 32767.0, 32767.25, 2.0**14, np.nextafter(2.0**14, 0), 1.0, np.nextafter(1.0, 0.0),
            np.nextafter(1.0, 2.0), 2.0**14 - 0.5, 2.0**-32, 2.0**-33, 1e-12, 3e4]
    for v in edge:
        r = np.array([[v, v / 3.0]]).T  # one column, two terms
        _check_multipliers(r, *quantize_multiplier(r))
    M, S = quantize_multiplier(np.zeros((2, 3)))
    assert (M == 0).all() and (S == MAX_SHIFT).all()


@given(st.floats(min_value=2.0**15, max_value=1e300))
def test_quantize_multiplier_too_large(v):
    """A largest ratio of 2**15 or more cannot be a 15-bit multiplier: IntssmError naming the site."""
    with pytest.raises(IntssmError, match="mysite.*too large"):
        quantize_multiplier(np.array([[0.5, v], [v / 2, 1.0]]), "mysite")


@pytest.mark.parametrize("bad", [-1e-9, -1.0, float("nan"), float("inf"), -float("inf")])
def test_quantize_multiplier_rejects_negative_and_nonfinite(bad):
    """Negative, NaN or infinite ratios are an IntssmError, not a garbage multiplier."""
    with pytest.raises(IntssmError, match="finite and non-negative"):
        quantize_multiplier(np.array([[1.0, bad]]), "site")


@pytest.mark.parametrize("v", [2.0**15 - 0.5, 32767.75, 32767.99, float(np.nextafter(2.0**15, 0.0))])
def test_quantize_multiplier_just_below_limit(v):
    """A ratio that rounds to 2**15 at S = 0 has no valid (M, S): IntssmError, never a negative shift."""
    M, S = quantize_multiplier(np.array([[v - 0.5]]))  # just representable at S = 0
    assert S.tolist() == [0] and M.tolist() == [[32767]]
    with pytest.raises(IntssmError, match="edge.*too large"):
        quantize_multiplier(np.array([[1.0], [v]]), "edge")


@given(st.integers(-2**31, 2**31 - 1), st.integers(-2**31, 2**31 - 1), st.integers(0, 31))
def test_width_generic_ops_wrap_at_32_bits(a, b, sh):
    """wmul/wadd/wsub/washr on int32 operands are two's-complement int32 ops (they wrap); on int64
    operands in range they are exact; cast_like takes the width of its second argument."""
    from numba import njit

    from intssm.datapath.fixedpoint import cast_like, wadd, washr, wmul, wsub

    @njit
    def ops(x, y, s, like):
        x, y, s = cast_like(x, like), cast_like(y, like), cast_like(s, like)
        return wmul(x, y), wadd(x, y), wsub(x, y), washr(x, s), cast_like(x < y, like)

    def wrap(v):
        return (v + 2**31) % 2**32 - 2**31

    r32 = ops(a, b, sh, np.zeros(1, np.int32))
    assert tuple(int(v) for v in r32) == (wrap(a * b), wrap(a + b), wrap(a - b), a >> sh, int(a < b))
    r64 = ops(a, b, sh, np.zeros(1, np.int64))
    assert tuple(int(v) for v in r64) == (a * b, a + b, a - b, a >> sh, int(a < b))


@given(st.integers(0, 2**16), st.integers(0, 20), st.integers(-3, 3), st.sampled_from([(-8.0, 7.0), (0.0, 63.0), (-128.0, 127.0)]))
def test_fused_rshift_clamp_equals_composite(seed, smax, z, lohi):
    """rshift_clamp_t (one autograd node) gives exactly the integers and the gradient of
    clamp_t(rounding_rshift_t(., ste=True) + z): 2**-S where not saturated, 0 where saturated."""
    from intssm.training.fixedpoint_torch import clamp_t, rounding_rshift_t, rshift_clamp_t

    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, smax + 1, (3,), generator=g).double()
    acc = torch.randint(-2**22, 2**22, (4, 5, 3), generator=g).double() * torch.exp2(s - 12).round()
    lo, hi = lohi
    a1 = acc.clone().requires_grad_(True)
    a2 = acc.clone().requires_grad_(True)
    o1 = rshift_clamp_t(a1, s, z, lo, hi, ste=True)
    o2 = clamp_t(rounding_rshift_t(a2, s, ste=True) + z, lo, hi)
    assert torch.equal(o1, o2)
    w = torch.randn(o1.shape, generator=g, dtype=torch.float64)
    (o1 * w).sum().backward()
    (o2 * w).sum().backward()
    assert torch.equal(a1.grad, a2.grad)
    assert torch.equal(rshift_clamp_t(acc, s, z, lo, hi), o2.detach())


# ------------------------------------------------------------- the dithered state rounding ---

@njit(cache=True)
def _weyl_nb(phase, j, s):
    return weyl_offset(phase, j, s)


@njit(cache=True)
def _offset_nb(v, d, s):
    return offset_rshift(v, d, s)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**20), st.integers(0, 32))
def test_weyl_offset_definition(phase, j, s):
    """Numba and Torch give ((phase + j WEYL_LANE) mod 2**32) >> (32 - s), in [0, 2**s), as integers."""
    want = ((phase + j * WEYL_LANE) % 2**32) >> (32 - s)
    assert 0 <= want < 2**s
    assert _weyl_nb(np.int64(phase), np.int64(j), np.int64(s)) == want
    got = weyl_offset_t(phase, torch.tensor([float(j)], dtype=torch.float64), torch.tensor([float(s)], dtype=torch.float64))
    assert got.item() == want


@given(st.integers(-(2**50), 2**50), st.integers(0, 32).flatmap(lambda s: st.tuples(st.just(s), st.integers(0, 2**s - 1))))
def test_offset_rshift_is_floor_of_offset_sum(v, sd):
    """Numba and Torch offset_rshift(v, d, s) == floor((v + d) / 2**s) for drawn v, s in 0..32 and 0 <= d < 2**s;
    with d = 2**(s-1) it equals rounding_rshift (round half up)."""
    s, d = sd
    assert _offset_nb(np.int64(v), np.int64(d), np.int64(s)) == (v + d) // 2**s
    t = offset_rshift_t(torch.tensor([float(v)], dtype=torch.float64), torch.tensor([float(d)], dtype=torch.float64),
                        torch.tensor([float(s)], dtype=torch.float64))
    assert t.item() == (v + d) // 2**s
    if s:
        assert _offset_nb(np.int64(v), np.int64(1 << (s - 1)), np.int64(s)) == rounding_rshift(np.int64(v), np.int64(s))


def test_dither_keeps_small_increments_on_average():
    """Rounding v / 2**s with the step-varying Weyl offset of one lane is unbiased over a sequence:
    the mean of the rounded values is within 1% of v / 2**s, where rounding half up is off by up
    to half a code (a fraction below 1/2 always goes to 0: the dead zone of a slow mode)."""
    s = 8
    for j in (0, 1, 17, 1023):
        for v in (3, 50, 127, 129, 200, 255, -3, -77, 1000 + 31):
            phases = [(k * WEYL_STEP) % 2**32 for k in range(2000)]
            r = [(v + (((p + j * WEYL_LANE) % 2**32) >> (32 - s))) >> s for p in phases]
            err = abs(np.mean(r) - v / 2**s)
            assert err < 0.01
            half_up_err = abs((v + 2 ** (s - 1)) // 2**s - v / 2**s)  # the same every step: systematic
            if half_up_err > 0.02:
                assert err < half_up_err / 2
