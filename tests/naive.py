"""Slow, obviously correct references of the fixed-point primitives (plain Python ``int``, never numpy).

Python integers are unbounded and ``//`` is exact floor division, so these functions have no
overflow, no wrap-around and no float anywhere: they state what :mod:`intssm.datapath.fixedpoint` must
compute, nothing more.
"""

from __future__ import annotations


def _int(x) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"naive reference takes plain Python ints, got {type(x).__name__}")
    return x


def rounding_rshift(v: int, s: int) -> int:
    """floor((v + 2**(s-1)) / 2**s) for s >= 1 (division by 2**s, ties toward +inf); v for s == 0."""
    v, s = _int(v), _int(s)
    if s < 0:
        raise ValueError("shift must be >= 0")
    if s == 0:
        return v
    return (v + 2 ** (s - 1)) // 2**s


def saturate(v: int, lo: int, hi: int) -> tuple[int, int]:
    """(v clamped to [lo, hi], 1 if it had to be clamped else 0)."""
    v, lo, hi = _int(v), _int(lo), _int(hi)
    if lo > hi:
        raise ValueError("need lo <= hi")
    if v < lo:
        return lo, 1
    if v > hi:
        return hi, 1
    return v, 0


def requantize(acc: int, m: int, s: int, z: int, lo: int, hi: int) -> tuple[int, int]:
    """clamp(rounding_rshift(acc * m, s) + z, lo, hi); (code, flag)."""
    return saturate(rounding_rshift(_int(acc) * _int(m), s) + _int(z), lo, hi)
