"""The C arithmetic of each requantization site kind: accumulator and term types from the
datapath's bound proof (:mod:`intssm.datapath.bounds`), and the C expressions of a site's
multiply-accumulate and rounding shift."""

from __future__ import annotations

import math
from dataclasses import dataclass

from intssm.datapath import layout


INT32_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class SiteWidth:
    """The C arithmetic of one requantization site kind, from its proved bounds (all layers)."""

    kind: str
    term_bound: int  # largest |term| before its multiplier (a product or dot product of centred codes)
    acc_bound: int  # largest |accumulator| (terms times multipliers, plus the rounding offset)
    max_shift: int
    min_shift: int
    term64: bool  # terms need int64
    acc64: bool  # the accumulator needs int64 (a 32 x 32 -> 64-bit multiply-accumulate)
    post64: bool = False  # a rounded result may pass 2^30: rounded in int64, clamped to +-2^30 before the zero point

    @property
    def wide_shift(self) -> bool:
        return self.max_shift > 31

    def describe(self) -> str:
        acc = "int64 (32x32->64-bit multiply-accumulate)" if self.acc64 and not self.term64 else \
            "int64" if self.acc64 else "int32"
        return (f"{self.kind}: terms {'int64' if self.term64 else 'int32'} (|t| <= 2^{math.log2(max(self.term_bound, 1)):.1f}), "
                f"accumulator {acc} (|acc| <= 2^{math.log2(max(self.acc_bound, 1)):.1f}), shifts <= {self.max_shift}")


def site_widths(m) -> dict:
    """kind -> :class:`SiteWidth` of every site kind of the model ``m`` (an
    :class:`~intssm.datapath.intmodel.IntModel`): the accumulator bound is the one
    :func:`intssm.datapath.bounds.site_bound` proved when ``m`` was validated
    (``m.site_bounds``), the largest over the layers."""
    from intssm.datapath.bounds import channel_sums, site_term_bounds

    cfg, a = m.cfg, m.arrays
    T = site_term_bounds(cfg, m.qcfg, m.seq_len)
    out = {}
    for kind, _, _, per_layer in layout.SITES:
        terms, bias = T[kind]
        acc, smax, post, smin = 0, 0, 0, 64
        for i in (range(cfg.n_layers) if per_layer else [None]):
            M, S = layout.site_arrays(a, kind, i)
            acc = max(acc, m.site_bounds[kind if i is None else f"l{i}.{kind}"])
            smax, smin = max(smax, int(S.max())), min(smin, int(S.min()))
            for b, s in zip(channel_sums(terms, bias, M), S):
                post = max(post, (b + (1 << int(s))) >> int(s))
        tb = max(terms) + bias  # a term with its bias (sites with a bias have one term)
        # the bound includes the rounding offset, 2^(S-1) (2^S - 1 dithered): a shift past 31 is int64 already
        out[kind] = SiteWidth(kind, tb, acc, smax, smin, tb > INT32_LIMIT, acc > INT32_LIMIT, post > 2**30)
    return out


def rq(w: SiteWidth, acc: str, d: str, s: str) -> str:
    """C expression: floor((acc + d) / 2^s) as int32_t, for site ``w``'s accumulator type. Where the
    result may pass 2^30 it is clamped to +-2^30: every code range lies well inside, so the site's
    saturation (and its counter) is unchanged and adding a zero point cannot overflow."""
    if w.post64:
        return f"clamp30(rq64x({acc}, {d}, {s}))"
    if not w.acc64:
        return f"rq32({acc}, {d}, {s})"
    return f"rq64w({acc}, {d}, {s})" if w.wide_shift else f"rq64({acc}, {d}, {s})"


def acc_t(w: SiteWidth) -> str:
    return "int64_t" if w.acc64 else "int32_t"


def term_t(w: SiteWidth) -> str:
    return "int64_t" if w.term64 else "int32_t"


def half(w: SiteWidth, s: str) -> str:
    """The half-up rounding offset 2^(s-1) (0 for s = 0) in the site's accumulator type."""
    return f"(({acc_t(w)})1 << ({s}) >> 1)"


def product(a: str, b: str, wide: bool) -> str:
    """C expression of the product of two int32 operands, in int64 where ``wide``."""
    return f"(int64_t){a} * {b}" if wide else f"{a} * {b}"


def mac(w: SiteWidth, terms) -> str:
    """sum of term_t * M_t in the accumulator type: 32 x 32 -> 64-bit products where it is int64.
    ``terms``: (sign, term, multiplier), the term cast to the accumulator type times the multiplier,
    or (sign, product) for a product already formed in that type."""
    acc = acc_t(w)
    parts = []
    for sign, t, *m in terms:
        parts.append(f"{sign} ({acc})({t}) * {m[0]}" if m else f"{sign} {t}")
    text = " ".join(parts).strip()
    return text[2:] if text.startswith("+ ") else text
