"""The generated model functions: the C helpers (rounding shifts, saturation, packed reads, the
Weyl dither), reset, state access, step, the streaming readout and classify."""

from __future__ import annotations

import math

import numpy as np

from intssm.datapath import layout
from intssm.datapath.fixedpoint import WEYL_LANE, WEYL_STEP, weyl_lane_of
from intssm.integer.csites import INT32_LIMIT, SiteWidth, acc_t, half, mac, product, rq, term_t
from intssm.integer.cstorage import MODE_RECORD, Plan, fold_group
from intssm.integer.ctext import CExpr, c_hex32, ctype_for, field_read


_HELPERS_COMMON = r"""
/* 1 where the compiler offers the Armv7E-M DSP extension's dual 16-bit multiplies (Cortex-M4, M7,
 * M33): the shared-scale state update with the state as 16-bit halves uses them (ACLE intrinsics). */
#if (defined(__ARM_FEATURE_SIMD32) || defined(__ARM_FEATURE_SAT)) && !defined(INTSSM_NO_DSP)
#include <arm_acle.h>
#endif
#if defined(__ARM_FEATURE_SIMD32) && !defined(INTSSM_NO_DSP)
#define INTSSM_DSP 1
#else
#define INTSSM_DSP 0
#endif
/* SATB(v, b, cnt): sat() for the full b-bit signed range, with SSAT where the core has it. */
#if defined(__ARM_FEATURE_SAT) && !defined(INTSSM_NO_DSP)
#if defined(__GNUC__) && !defined(__clang__)
/* GCC's __builtin_arm_ssat (behind ACLE's __ssat) is declared to return unsigned int; its value is
 * the signed b-bit result, which -Wsign-conversion is told here, and only here */
#define SSAT_(v, b) (__extension__({ _Pragma("GCC diagnostic push") \
    _Pragma("GCC diagnostic ignored \"-Wsign-conversion\"") const int32_t r_ = __ssat((v), (b)); \
    _Pragma("GCC diagnostic pop") r_; }))
#else
#define SSAT_(v, b) __ssat((v), (b))
#endif
#define SATB(v, b, cnt) ssat_count_((v), SSAT_((v), (b)), (cnt))
#else
#define SATB(v, b, cnt) sat((v), -(INT32_C(1) << ((b) - 1)), (INT32_C(1) << ((b) - 1)) - 1, (cnt))
#endif

/* Two's-complement bits to value: (int32_t)r for r < 2^31, else r - 2^32 (no implementation-defined
 * conversion; compilers emit no instruction for it). */
static inline int32_t as_i32(uint32_t r)
{
    return r < UINT32_C(0x80000000) ? (int32_t)r : -(int32_t)(~r) - 1;
}

/* Fields of packed tables and state. WINDOW(off, bit): the 32 bits of model_bits from byte
 * off + bit / 8, little-endian, shifted right by bit % 8 -- holds any field of <= 25 bits that
 * starts at that bit. SX / UX: the low w bits as a two's-complement / unsigned value. */
static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
#define WINDOW(off, bit) (rd32(model_bits + (off) + ((bit) >> 3)) >> ((bit) & 7u))
#define UX(v, w) ((int32_t)((v) & ((UINT32_C(1) << (w)) - 1u)))
#if (defined(__GNUC__) || defined(__clang__)) && !defined(INTSSM_PORTABLE_SHIFTS)
#define SX(v, w) ((int32_t)((uint32_t)(v) << (32 - (w))) >> (32 - (w)))  /* SBFX / ASR */
#else
#define SX(v, w) (as_i32((((v) & ((UINT32_C(1) << (w)) - 1u)) ^ (UINT32_C(1) << ((w) - 1))) - (UINT32_C(1) << ((w) - 1))))
#endif

/* Rounding shifts: floor((v + d) / 2^s), which is round half up for d = 2^(s-1) (exactly
 * intssm.datapath.fixedpoint.rounding_rshift) and the state's rounding for any d in [0, 2^s)
 * (offset_rshift). v + d and the result are proved to fit the types used (per site, header).
 * GCC and Clang define >> of a negative signed value as an arithmetic shift, which is the floor;
 * C99 leaves it implementation-defined (6.5.7p5), so other compilers (or -DINTSSM_PORTABLE_SHIFTS)
 * shift unsigned bit patterns instead, with the same results:
 *  rq32:  32-bit v, s in [0, 31]: floor(v / 2^s) = ((v + 2^31) >> s) - 2^(31-s), mod 2^32;
 *  rq64:  64-bit v, s in [0, 31]: the low 32 bits of floor(v / 2^s) are bits s..s+31 of v, the same
 *         for logical and arithmetic shifts, and the result fits int32;
 *  rq64w: 64-bit v, s in [0, 62]: as rq32, with 2^63. */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(INTSSM_PORTABLE_SHIFTS)
#define RQH32(v, s1) ((((int32_t)(v) >> (s1)) + 1) >> 1)
#define RQH64(v, s1) ((int32_t)((((int64_t)(v) >> (s1)) + 1) >> 1))
#define rq64x(v, d, s) ((((int64_t)(v) + (int64_t)(d)) >> (s)))
#define rq32(v, d, s) ((int32_t)(((int32_t)(v) + (int32_t)(d)) >> (s)))
#define rq64(v, d, s) ((int32_t)(((int64_t)(v) + (int64_t)(d)) >> (s)))
#define rq64w(v, d, s) ((int32_t)(((int64_t)(v) + (int64_t)(d)) >> (s)))
#else
static inline int32_t rq32(int32_t v, int32_t d, int s)
{
    const uint32_t u = ((uint32_t)v + (uint32_t)d) ^ UINT32_C(0x80000000);
    return as_i32((u >> s) - (UINT32_C(0x80000000) >> s));
}
static inline int32_t rq64(int64_t v, int64_t d, int s)
{
    return as_i32((uint32_t)(((uint64_t)v + (uint64_t)d) >> s));
}
static inline int32_t rq64w(int64_t v, int64_t d, int s)
{
    const uint64_t u = ((uint64_t)v + (uint64_t)d) ^ (UINT64_C(1) << 63);
    return as_i32((uint32_t)((u >> s) - ((UINT64_C(1) << 63) >> s)));
}
#define RQH32(v, s1) rq32((v), (int32_t)1 << (s1), (s1) + 1)
#define RQH64(v, s1) rq64((v), (int64_t)1 << (s1), (s1) + 1)
static inline int64_t rq64x(int64_t v, int64_t d, int s)  /* the whole 64-bit floor; |v + d| < 2^53 */
{
    v += d;
    return v >= 0 ? (v >> s) : -((-v - 1) >> s) - 1;
}
#endif
static inline int32_t clamp30(int64_t v)
{
    return v < -(INT64_C(1) << 30) ? -(INT32_C(1) << 30) : v > (INT64_C(1) << 30) ? (INT32_C(1) << 30) : (int32_t)v;
}

/* Clamp to [lo, hi]; every clamp increments *cnt. */
static inline int32_t sat(int32_t v, int32_t lo, int32_t hi, uint32_t *cnt)
{
    if (v < lo) {
        ++*cnt;
        return lo;
    }
    if (v > hi) {
        ++*cnt;
        return hi;
    }
    return v;
}
/* ssat_count_: the count beside SSAT's clamp; the increment is the rare path (out of line). */
#if defined(__GNUC__) || defined(__clang__)
#define INTSSM_RARE(c) __builtin_expect(!!(c), 0)
#else
#define INTSSM_RARE(c) (c)
#endif
static inline int32_t ssat_count_(int32_t v, int32_t clamped, uint32_t *cnt)
{
    if (INTSSM_RARE(clamped != v))
        ++*cnt;
    return clamped;
}

"""


def weyl_helper() -> str:
    """The C of :func:`intssm.datapath.fixedpoint.weyl_offset` (compiled where ``INTSSM_DITHER``)."""
    return f"""/* The dither offset of lane j at step phase ph, for shifts s in [0, 32]:
 * ((ph + j * {c_hex32(WEYL_LANE)}) mod 2^32) >> (32 - s), exactly intssm.datapath.fixedpoint.weyl_offset (uint32_t
 * arithmetic wraps mod 2^32; s = 0 is kept apart because a 32-bit shift of a uint32_t is undefined). */
#if INTSSM_DITHER
static inline uint32_t weyl_offset(uint32_t ph, uint32_t j, int s)
{{
    const uint32_t w = ph + j * UINT32_C({c_hex32(WEYL_LANE)});
    return s == 0 ? 0 : w >> (32 - s);
}}
#endif
"""


#: The C helpers every model needs (fields, rounding shifts, saturation, the Weyl dither).
HELPERS = _HELPERS_COMMON + weyl_helper()


def c_lane(NS: str, part: int, n: str) -> str:
    """C expression of the dither lane of state part ``part`` (0: Re, 1: Im) of layer ``i``, channel
    ``hh``, mode ``n``: :func:`intssm.datapath.fixedpoint.weyl_lane_of` applied to C operands."""
    return weyl_lane_of(CExpr("i"), part, CExpr(f"{NS}_H"), CExpr("hh"), CExpr(f"{NS}_N2"), CExpr(n, compound=True)).text


def _half_trick(w: SiteWidth, dither: bool) -> bool:
    """Whether the state loop rounds half up as floor((floor(acc / 2^(s-1)) + 1) / 2): one register
    (s - 1) instead of two (s and 2^(s-1)) per part; needs every shift >= 1."""
    return not dither and w.min_shift >= 1 and not w.post64 and not w.wide_shift


def shared_update(a: dict) -> bool:
    """Whether every layer's state update has one multiplier for both Abar terms of both parts, one
    for both B terms, and one shift (a model quantized with ``complex_scale`` "shared"): the C
    then forms the complex product first and requantizes once per part."""
    Mr, Mi = a["x_re_M"], a["x_im_M"]
    return bool(np.array_equal(Mr[:, 0], Mr[:, 1]) and np.array_equal(Mr[:, 0], Mi[:, 0])
                and np.array_equal(Mr[:, 0], Mi[:, 1]) and np.array_equal(Mr[:, 2], Mi[:, 2])
                and np.array_equal(a["x_re_S"], a["x_im_S"]))


#: The folded layout's primitives (after :data:`HELPERS`): one instruction each on a core with the
#: DSP extension and GCC-compatible inline assembly, the same values in portable C elsewhere.
FOLD_HELPERS = r"""
/* The folded state update's primitives.
 * SSAT_ASR(v, b, t): floor(v / 2^t) saturated to the full b-bit signed range (no count), t in [1, 31]:
 *   SSAT with its shift. PACK16(lo, hi): lo's low 16 bits, hi's low 16 bits above them (PKHBT).
 * OPAQUE(v): the compiler keeps v in a register (so that it is the addend of a multiply-accumulate
 *   instead of a separate add of an immediate); no instruction, no change of value.
 * INTSSM_QFLAG 1: SSAT's sticky saturation flag (APSR.Q) counts the clamps. SAT_FLAG() is nonzero once
 *   an SSAT clamped since SAT_CLEAR(); the loop clears it per channel, reads it once per group of
 *   modes and only then counts that group's clamps one by one. Nothing else between sets Q: the
 *   other Q-setting instructions (SMLAD, SMLABB, SMLATT) overflow nowhere (the sites' bound proofs),
 *   and an exception returns with the APSR it interrupted. */
#if INTSSM_DSP && (defined(__GNUC__) || defined(__clang__))
#define SSAT_ASR(v, b, t) (__extension__({ int32_t r_; \
    __asm__ __volatile__("ssat %0, %1, %2, asr %3" : "=r"(r_) : "I"(b), "r"((int32_t)(v)), "I"(t)); r_; }))
#define SAT_FLAG() (__extension__({ uint32_t r_; __asm__ __volatile__("mrs %0, apsr" : "=r"(r_)); r_ & UINT32_C(0x08000000); }))
#define SAT_CLEAR() do { uint32_t r_; \
    __asm__ __volatile__("mrs %0, apsr\n\tbic %0, %0, #0x08000000\n\tmsr apsr_nzcvq, %0" : "=&r"(r_) : : "cc"); } while (0)
#define PACK16(lo, hi) (__extension__({ uint32_t r_; \
    __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r_) : "r"((int32_t)(lo)), "r"((int32_t)(hi))); r_; }))
#define OPAQUE(v) __asm__("" : "+r"(v))
#define INTSSM_QFLAG 1
#else
static inline int32_t ssat_asr_(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}
#define SSAT_ASR(v, b, t) ssat_asr_(rq32((v), 0, (t)), -(INT32_C(1) << ((b) - 1)), (INT32_C(1) << ((b) - 1)) - 1)
#define PACK16(lo, hi) (((uint32_t)(lo) & 0xffffu) | ((uint32_t)(hi) << 16))
#define OPAQUE(v) ((void)0)
#define INTSSM_QFLAG 0
#endif
"""


def folded_loop(ns: str, p: Plan, w: dict, dims: dict) -> tuple[str, str, str]:
    """(per-channel declarations, mode loop, its helper function) of the state update in the folded layout
    (:class:`intssm.integer.cstorage.Fold`): per mode, three multiply-accumulates per part on 32-bit
    folded constants, one rounding shift by the constant T (or the channel's S), the clamp (SSAT
    with the shift folded in, where the core has it) with its count out of the common path, the state
    written back as 16-bit halves (PKHBT), and the output sums (SMLABB / SMLATT with the DSP extension)."""
    NS = ns.upper()
    fo = p.fold
    ty_t = term_t(w["y"])
    dsp_y = ty_t == "int32_t"  # the output sums fit one 32-bit accumulator each: the DSP's 16 x 16 + 32 MACs
    if fo.T is not None:
        pre = [f"int32_t d = INT32_C({1 << (fo.T - 1)});  /* 2^(T-1), T = {fo.T}: every channel's rounding */",
               "OPAQUE(d);"]
        sh_r = sh_i = str(fo.T)
    else:
        pre = ["const int sr = AT_x_re_S(i, hh), si = AT_x_im_S(i, hh);",
               "const int32_t dr = (int32_t)1 << sr >> 1, di = (int32_t)1 << si >> 1;"]
        sh_r, sh_i = "sr", "si"
    dr, di = ("d", "d") if fo.T is not None else ("dr", "di")
    G = fold_group(dims["N2"])
    W = fo.words.shape[1]  # words per mode: 7, or 5 with shared scales
    pre += [f"const int32_t *kp = x_fold + (uint32_t)k0 * {W}u;",
            "uint8_t *xp = s->x + (uint32_t)k0 * 4u;"]

    def satx(nv: str, qr: tuple, acc: str, sh: str, c: int) -> list:
        """The clamp of ``acc`` shifted by ``sh`` into ``nv``, and its count (the rare path)."""
        b = qr[1].bit_length() + 1
        v = f"rq32({acc}, 0, {sh})"
        if qr != (-(1 << (b - 1)), (1 << (b - 1)) - 1):
            return [f"const int32_t {nv} = sat({v}, {qr[0]}, {qr[1]}, &cnt[base + {c}]);"]
        if fo.T is None:
            return [f"const int32_t {nv} = SATB({v}, {b}, &cnt[base + {c}]);"]
        qchecks.append((nv, acc, v, c, 1 << (b - 1)))
        return [f"const int32_t {nv} = SSAT_ASR({acc}, {b}, {sh});",
                "#if !INTSSM_QFLAG",
                f"if (INTSSM_RARE({nv} != {v}))",
                f"    ++cnt[base + {c}];",
                "#endif"]

    qchecks = []

    def mode(q: int) -> tuple[list, list]:
        """(mode q's update, its state store)."""
        def k(j: int) -> str:  # word j (K0..K5, C) of mode q
            return f"kp[{q * W + (j if not fo.shared else (0, 1, 2, None, None, 3, 4)[j])}]"

        xim = (f"{k(3)} * xi{q} + {k(4)} * xr{q}" if not fo.shared else f"{k(0)} * xi{q} - {k(1)} * xr{q}")  # K3 = K0, K4 = -K1
        out = [f"const uint32_t xw{q} = rd32(xp + {4 * q});",
               f"const int32_t xr{q} = SX(xw{q}, 16), xi{q} = SX(xw{q} >> 16, 16);",
               f"const int32_t acc_r{q} = {dr} + {k(2)} * u + {k(0)} * xr{q} + {k(1)} * xi{q};",
               f"const int32_t acc_i{q} = {di} + {k(5)} * u + {xim};"]
        out += satx(f"nr{q}", dims["QR_X_RE"], f"acc_r{q}", sh_r, layout.C_XRE) + \
            satx(f"ni{q}", dims["QR_X_IM"], f"acc_i{q}", sh_i, layout.C_XIM)
        c2 = k(6)
        out += [f"const uint32_t nw{q} = PACK16(nr{q}, ni{q});",
                *(["#if INTSSM_DSP",
                   f"ty1 = __smlabb(as_i32(nw{q}), {c2}, ty1);  /* + nr C_re' */",
                   f"ty2 = __smlatt(as_i32(nw{q}), {c2}, ty2);  /* + ni C_im' */",
                   "#else"] if dsp_y else []),
                f"ty1 += ({ty_t})nr{q} * SX((uint32_t){c2}, 16);",
                f"ty2 += ({ty_t})ni{q} * SX((uint32_t){c2} >> 16, 16);",
                *(["#endif"] if dsp_y else [])]
        return out, [f"xp[{4 * q + b}] = (uint8_t)(nw{q} >> {8 * b});" for b in range(4)]

    ind = " " * 16
    parts = [mode(q) for q in range(G)]
    lines = [ln for up, _ in parts for ln in up]
    helper = ""
    if qchecks:  # the group's clamps counted only where an SSAT clamped, from the state not yet written
        lines += ["#if INTSSM_QFLAG", "if (INTSSM_RARE(SAT_FLAG())) {",
                  f"    fold_recount_(kp, xp, u, d, &cnt[base + {layout.C_XRE}], &cnt[base + {layout.C_XIM}]);",
                  "    SAT_CLEAR();", "}", "#endif"]
        pre += ["#if INTSSM_QFLAG", "SAT_CLEAR();", "#endif"]
        (hr, hi) = (qchecks[0][4], qchecks[1][4])
        helper = f"""
#if INTSSM_QFLAG
/* The state clamps of the {G} modes of a group of the folded update, recomputed from their state words
 * (not yet overwritten) and folded words, added to the counters *cr, *ci: the rare path of the
 * saturation flag. Out of line, so that the common path keeps no accumulator for it. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
static void fold_recount_(const int32_t *kp, const uint8_t *xp, int32_t u, int32_t d, uint32_t *cr, uint32_t *ci)
{{
    int q;
    for (q = 0; q < {G}; ++q, kp += {W}, xp += 4) {{
        const uint32_t xw = rd32(xp);
        const int32_t xr = SX(xw, 16), xi = SX(xw >> 16, 16);
        const int32_t vr = rq32(d + kp[2] * u + kp[0] * xr + kp[1] * xi, 0, {sh_r});
        const int32_t vi = rq32(d + {"kp[5] * u + kp[3] * xi + kp[4] * xr" if not fo.shared else "kp[3] * u + kp[0] * xi - kp[1] * xr"}, 0, {sh_i});
        if ((uint32_t)(vr + {hr}) > {2 * hr - 1}u)  /* outside [-{hr}, {hr - 1}]: clamped */
            ++*cr;
        if ((uint32_t)(vi + {hi}) > {2 * hi - 1}u)
            ++*ci;
    }}
}}
#endif
"""
    lines += [ln for _, st in parts for ln in st]  # the state written after the group's counts
    body = "\n".join(ind + ln if not ln.startswith("#") else ln for ln in lines)
    loop = ("\n".join(" " * 12 + ln if not ln.startswith("#") else ln for ln in pre) + "\n"
            f"            for (n = 0; n < {NS}_N2; n += {G}, kp += {G * W}, xp += {4 * G}) {{\n{body}\n            }}")
    decl = ("            const int32_t u = h[hh] - AT_h_z(i);\n"
            f"            const int k0 = (i * {NS}_H + hh) * {NS}_N2;\n"
            f"            {ty_t} ty1 = 0, ty2 = 0;\n"
            "            int32_t y;")
    return decl, loop, helper



def folded_mix(ns: str, dims: dict, w: dict) -> tuple[str, str]:
    """(per-layer preparation, row dot product) of the GLU mixing on the int8 weights of the folded
    layout (:func:`intssm.integer.cstorage.mix_words`): with the DSP extension the centred
    activations as 16-bit pairs (a_4q, a_4q+2), (a_4q+1, a_4q+3), and per weight word SXTB16 twice
    and two SMLAD (four multiply-accumulates); portable C elsewhere. The sum is the datapath's
    (integer addition in any order; |t| is bounded by the glu site's proof, int32)."""
    NS = ns.upper()
    H = dims["H"]
    tt = term_t(w["glu"])
    pre = ("#if INTSSM_DSP\n"
           f"        int16x2_t ap[{H // 2}];  /* (a_4q - az, a_4q+2 - az), (a_4q+1 - az, a_4q+3 - az) */\n"
           f"        for (hh = 0; hh < {NS}_H; hh += 4) {{\n"
           "            const int32_t az_ = AT_act_z(i);\n"
           "            ap[hh / 2] = as_i32(PACK16(a[hh] - az_, a[hh + 2] - az_));\n"
           "            ap[hh / 2 + 1] = as_i32(PACK16(a[hh + 1] - az_, a[hh + 3] - az_));\n"
           "        }\n"
           "#endif\n")
    lines = [f"            const uint32_t *wq = x_mix + (uint32_t)(i * 2 * {NS}_H + j) * {H // 4}u;", "            (void)wz, (void)az;"]
    portable = []
    for q in range(H // 4):
        portable.append(f"            {{ const uint32_t w_ = wq[{q}];")
        portable += [f"              t += ({tt})SX(w_{f' >> {8 * k}' if k else ''}, 8) * (a[{4 * q + k}] - az);" for k in range(4)]
        portable[-1] += " }"
    if tt != "int32_t":  # 64-bit terms: no 32-bit SMLAD
        return "", "\n".join(lines + portable)
    lines.append("#if INTSSM_DSP")
    for q in range(H // 4):
        lines += [f"            t = __smlad(__sxtb16(as_i32(wq[{q}])), ap[{2 * q}], t);",
                  f"            t = __smlad(__sxtb16(as_i32(wq[{q}] >> 8)), ap[{2 * q + 1}], t);"]
    return pre, "\n".join(lines + ["#else"] + portable + ["#endif"])


def functions(ns: str, p: Plan, w: dict, dims: dict, dither: bool, shared: bool = False) -> str:
    """The API's functions (reset, step, readout), with the counter indices of :mod:`intssm.datapath.layout`."""
    NS = ns.upper()
    x = p.x
    xr_rd, xi_rd = field_read("xw", x["wr"], x["sr"]), field_read(f"(xw >> {x['wr']})", x["wi"], x["si"])
    XB = x["bits"]
    rmask = hex((1 << XB) - 1) if XB < 32 else "0xffffffff"
    pack = (f"((uint32_t)nr & {hex((1 << x['wr']) - 1)}u) | ((uint32_t)ni & {hex((1 << x['wi']) - 1)}u) << {x['wr']}")

    def x_store(addr: str, sh: str, ind: str, old: str | None = None) -> str:
        """Write record ``xw`` at bit ``sh`` of the 32-bit window at ``addr``, keeping the window's
        other bits (``old``: that window as read before, when nothing wrote it since)."""
        keep = f"~((uint32_t){rmask}u << {sh})" if XB < 32 else "0u"
        return (f"{ind}{{\n{ind}    uint8_t *const xq_ = {addr};\n"
                f"{ind}    const uint32_t ow_ = ({old or 'rd32(xq_)'} & {keep}) | (xw << {sh});\n"
                + "".join(f"{ind}    xq_[{b}] = (uint8_t)(ow_ >> {8 * b});\n" for b in range(4)) + f"{ind}}}")

    wxr, wxi, wy, wg, wp, wl = (w[k] for k in ("x_re", "x_im", "y", "glu", "pool", "logits"))
    tx = term_t(wxr) if not wxi.term64 else "int64_t"
    wide = tx == "int64_t"  # the products themselves need int64
    # int32 accumulators: |u M2| <= |B| |u| M2 <= the proved bound, so u M2 (umr, umi) is formed once per channel
    acc_r = mac(wxr, [("+", product("ar", "xr", wide), "mr0"), ("-", product("ai", "xi", wide), "mr1"),
                      ("+", product("br", "umr", wide)) if not wxr.acc64 and not wxr.term64 else
                      ("+", product("br", "u", wide), "mr2")])
    acc_i = mac(wxi, [("+", product("ar", "xi", wide), "mi0"), ("+", product("ai", "xr", wide), "mi1"),
                      ("+", product("bi", "umi", wide)) if not wxi.acc64 and not wxi.term64 else
                      ("+", product("bi", "u", wide), "mi2")])
    cplx = ""
    if shared:  # one arithmetic for both parts: the wider of the two sites' (they share multipliers and shifts)
        wxr = wxi = SiteWidth("x", max(wxr.term_bound, wxi.term_bound), max(wxr.acc_bound, wxi.acc_bound),
                              max(wxr.max_shift, wxi.max_shift), min(wxr.min_shift, wxi.min_shift),
                              wxr.term64 or wxi.term64, wxr.acc64 or wxi.acc64, wxr.post64 or wxi.post64)
        # x' = M (A x) + M_B B u: the complex product first (|Re|, |Im| <= the sum of two Abar terms'
        # bounds), then one multiplier; the x_im tables equal the x_re ones (shared_update)
        ct = "int64_t" if wxr.term64 or 2 * wxr.term_bound > INT32_LIMIT else "int32_t"
        cplx = f"const {ct} pr = ({ct})ar * xr - ({ct})ai * xi, pi = ({ct})ar * xi + ({ct})ai * xr;"
        zero = lambda k: p.stores[k].kind == "fold" and p.stores[k].value == 0  # noqa: E731
        if ct == "int32_t" and x["bits"] == 32 and x["wr"] == x["wi"] == 16 and all(
                zero(k) for k in ("x_re_z", "x_im_z", "A_re_z", "A_im_z")):
            # the state word is (x_re, x_im) as 16-bit halves: with the DSP extension, two dual
            # 16-bit multiplies form the complex product (SMUSD: lo*lo - hi*hi, SMUADX: lo*hi + hi*lo)
            a2 = "((uint32_t)ar & 0xffffu) | ((uint32_t)ai << 16)"
            f = {k: (fw, b) for k, fw, _, b in (p.record["fields"] if p.record else [])}
            if f.get("A_re") == (8, 0) and f.get("A_im") == (8, 8):
                # byte 1 of the record moved to byte 2, then SXTB16 sign-extends bytes 0 and 2
                a2 = "(uint32_t)__sxtb16((int32_t)((rec & 0xffffu) | (rec << 8)))"
            cplx = ("#if INTSSM_DSP\n"
                    f"const uint32_t a2 = {a2};  /* (Are, Aim) as 16-bit halves */\n"
                    "const int32_t pr = __smusd((int16x2_t)as_i32(a2), (int16x2_t)as_i32(xw)), "
                    "pi = __smuadx((int16x2_t)as_i32(a2), (int16x2_t)as_i32(xw));\n"
                    "(void)xr, (void)xi, (void)ar, (void)ai;\n"
                    "#else\n" + cplx + "\n#endif")
        once = not wxr.acc64 and not wxi.acc64 and ct == "int32_t"  # u M2 formed once per channel (umr)
        acc_r = mac(wxr, [("+", "pr", "mr0"), ("+", "br * umr") if once else ("+", product("br", "u", ct == "int64_t"), "mr2")])
        acc_i = mac(wxi, [("+", "pi", "mr0"), ("+", "bi * umr") if once else ("+", product("bi", "u", ct == "int64_t"), "mr2")])
    ty_t = term_t(wy)
    half_r, half_i = _half_trick(wxr, dither), _half_trick(wxi, dither)
    var = {"A_re": ("ar", "azr"), "A_im": ("ai", "azi"), "B_re": ("br", "bz"), "B_im": ("bi", "bz"), "C_re": ("cr", "cz"),
           "C_im": ("ci", "cz")}

    def rounding(ws: SiteWidth, acc: str, part: str, half: bool) -> str:
        sp = "r" if shared else part  # shared: one shift for both parts (the dither offsets stay per part)
        if half:  # floor((acc + 2^(s-1)) / 2^s) = floor((floor(acc / 2^(s-1)) + 1) / 2), s >= 1
            return f"RQH{'64' if ws.acc64 else '32'}({acc}, s{sp}1)"
        return rq(ws, acc, f"d{sp}" if not dither else f"d{part}", f"s{sp}")

    def satx(row: str, qr: tuple, v: str, c: int) -> str:
        """The state's clamp and count; SSAT where the code range is a full signed width."""
        b = qr[1].bit_length() + 1
        if qr == (-(1 << (b - 1)), (1 << (b - 1)) - 1):
            return f"SATB({v}, {b}, &cnt[base + {c}])"
        return f"sat({v}, QMIN_{row}, QMAX_{row}, &cnt[base + {c}])"

    def mode(rec: str | None, n: str, ind: str, xaddr: str, xsh: str, xpre: str | None = None) -> str:
        """One mode's update; ``rec`` the expression of its packed record (None: tables), ``n`` its
        index; its state record at bit ``xsh`` of the window at ``xaddr`` (``xpre``: that window,
        read before the group's writes, for byte-aligned records)."""
        out = []
        if rec is not None:
            out.append(f"const uint32_t rec = {rec};")
            for f, fw, sg, b in p.record["fields"]:
                v, z = var[f]
                out.append(f"const int32_t {v} = {field_read(f'(rec >> {b})' if b else 'rec', fw, sg)} - {z};")
        else:
            for f in MODE_RECORD:
                v, z = var[f]
                out.append(f"const int32_t {v} = AT_{f}(i, hh, {n}) - {z};")
        xread = xpre if xpre is not None else f"rd32({xaddr})" + (f" >> {xsh}" if xsh != "0" else "")
        out += [f"uint32_t xw = {xread};",
                f"const int32_t xr = {xr_rd} - zr;",
                f"const int32_t xi = {xi_rd} - zi;",
                "int32_t nr, ni;",
                "/* x_re' = Are x_re - Aim x_im + Bre u ;  x_im' = Are x_im + Aim x_re + Bim u */",
                *(cplx.split("\n") if cplx else []),
                f"const {acc_t(wxr)} acc_r = {acc_r};",
                f"const {acc_t(wxi)} acc_i = {acc_i};"]
        if dither:  # lanes j = ((2 i + part) H + hh) N2 + n
            out += [f"const {acc_t(wxr)} dr = ({acc_t(wxr)})weyl_offset(s->phase, (uint32_t)({c_lane(NS, 0, n)}), sr);",
                    f"const {acc_t(wxi)} di = ({acc_t(wxi)})weyl_offset(s->phase, (uint32_t)({c_lane(NS, 1, n)}), si);"]
        out += [f"nr = {satx('XRE', dims['QR_X_RE'], rounding(wxr, 'acc_r', 'r', half_r) + ' + zr', layout.C_XRE)};",
                f"ni = {satx('XIM', dims['QR_X_IM'], rounding(wxi, 'acc_i', 'i', half_i) + ' + zi', layout.C_XIM)};",
                f"xw = {pack};"]
        out = [ind + ln for ln in out] + [x_store(xaddr, xsh, ind, xpre)]
        out += [f"{ind}ty1 += ({ty_t})(nr - zr) * cr;", f"{ind}ty2 += ({ty_t})(ni - zi) * ci;"]
        return "\n".join(out)

    mix_dot = (f"            for (hh = 0; hh < {NS}_H; ++hh)\n"
               f"                t += ({term_t(wg)})(AT_mix_w(i, j, hh) - wz) * (a[hh] - az);")
    mw = p.stores.get("mix_w")  # None: the folded layout's int8 words (folded_mix)
    if mw is not None and mw.kind == "bits" and dims["H"] * mw.width % 8 == 0 and dims["H"] <= 64:
        # rows start on a byte: the row unrolled, each field at a constant byte and bit
        fw = mw.width
        lines = [f"            const uint8_t *wp = model_bits + {mw.offset} + (i * 2 * {NS}_H + j) * {dims['H'] * fw // 8};"]
        for q in range(dims["H"]):
            win = f"rd32(wp + {q * fw // 8})" + (f" >> {q * fw % 8}" if q * fw % 8 else "")
            lines.append(f"            t += ({term_t(wg)})({field_read(win, fw, mw.signed)} - wz) * (a[{q}] - az);")
        mix_dot = "\n".join(lines)
    if p.fold is not None:
        decl, loop, helper = folded_loop(ns, p, w, dims)
        pre_mix = ""
        if p.fold.mix is not None:
            pre_mix, mix_dot = folded_mix(ns, dims, w)
        return helper + reset_and_state_x(ns, dims, pack, XB, x_store, xr_rd, xi_rd) + \
            step_function(ns, dims, w, loop, mix_dot, decl, pre_mix) + readout(ns, dims, wp, wl)
    ind = " " * 16
    pre = []
    if not dither:
        pre += [f"const {acc_t(wxr)} dr = {half(wxr, 'sr')};" if not half_r else "const int sr1 = sr - 1;"]
        if not shared:
            pre += [f"const {acc_t(wxi)} di = {half(wxi, 'si')};" if not half_i else "const int si1 = si - 1;"]
    pre = "\n".join(" " * 12 + ln for ln in pre)
    r = p.record
    G = math.lcm(r["group"] if r is not None else 1, x["group"])
    if dims["N2"] % G == 0:  # whole groups of modes start on a byte: constant offsets inside a group
        R = r["bits"] if r is not None else 0
        pre_read = XB % 8 == 0  # whole-byte records: the group's windows are read before its writes
        reads = "\n".join(f"{ind}const uint32_t xw{q} = rd32(xp + {q * XB // 8});" for q in range(G)) if pre_read else ""
        body = "\n".join(
            ind + "{\n" + mode(None if r is None else (f"rd32(rp + {q * R // 8}) >> {q * R % 8}" if q * R % 8 else f"rd32(rp + {q * R // 8})"),
                               f"n + {q}", ind + "    ", f"xp + {q * XB // 8}", str(q * XB % 8),
                               f"xw{q}" if pre_read else None) + "\n" + ind + "}" for q in range(G))
        rp = "" if r is None else f"\n            const uint8_t *rp = model_bits + {r['offset']} + k0 / {G} * {G * R // 8};"
        loop = (f"{pre}{rp}\n            uint8_t *xp = s->x + k0 / {G} * {G * XB // 8};\n"
                f"            for (n = 0; n < {NS}_N2; n += {G}{', rp += ' + str(G * R // 8) if r is not None else ''}, xp += {G * XB // 8}) {{\n"
                + (reads + "\n" if reads else "") + f"{body}\n            }}")
    else:
        rec = None if r is None else f"WINDOW({r['offset']}u, (uint32_t)(k0 + n) * {r['bits']}u)"
        loop = (f"{pre}\n            for (n = 0; n < {NS}_N2; ++n) {{\n"
                f"{ind}const uint32_t xb = (uint32_t)(k0 + n) * {XB}u;\n"
                f"{mode(rec, 'n', ind, 's->x + (xb >> 3)', '(xb & 7u)')}\n            }}")
    return reset_and_state_x(ns, dims, pack, XB, x_store, xr_rd, xi_rd) + step_function(ns, dims, w, loop, mix_dot) + \
        readout(ns, dims, wp, wl)


def step_function(ns: str, dims: dict, w: dict, loop: str, mix_dot: str, decl: str | None = None, pre_mix: str = "") -> str:
    """C of ``<ns>_step``: the encoder; per layer the state loop ``loop`` (every mode's update and
    the output sums), the output site, the GLU mixing (its dot product ``mix_dot``) and the residual;
    the pooling sum, the step count and the dither phase. ``w``: the sites' :class:`SiteWidth`;
    ``decl``: the state loop's per-channel declarations (None: the tables' zero points, multipliers
    and shifts); ``pre_mix``: C run once per layer before the GLU mixing."""
    NS = ns.upper()
    nlc = len(layout.LAYER_COUNTERS)
    we, wy, wg, wh = (w[k] for k in ("enc", "y", "glu", "h"))
    ty_t = term_t(wy)
    h_t, a_t, g_t = (ctype_for(*dims[k])[0] for k in ("QR_H", "QR_ACT", "QR_GLU"))
    if decl is None:
        decl = f"""            const int32_t u = h[hh] - AT_h_z(i);
            const int32_t zr = AT_x_re_z(i, hh), zi = AT_x_im_z(i, hh);
            const int32_t azr = AT_A_re_z(i, hh), azi = AT_A_im_z(i, hh), bz = AT_B_z(i, hh), cz = AT_C_z(i, hh);
            const int32_t mr0 = AT_x_re_M(i, 0, hh), mr1 = AT_x_re_M(i, 1, hh), mr2 = AT_x_re_M(i, 2, hh);
            const int32_t mi0 = AT_x_im_M(i, 0, hh), mi1 = AT_x_im_M(i, 1, hh), mi2 = AT_x_im_M(i, 2, hh);
            const int32_t umr = u * mr2, umi = u * mi2;
            (void)mr0, (void)mr1, (void)mi0, (void)mi1, (void)umr, (void)umi;
            const int sr = AT_x_re_S(i, hh), si = AT_x_im_S(i, hh);
            (void)si;
            const int k0 = (i * {NS}_H + hh) * {NS}_N2;
            {ty_t} ty1 = 0, ty2 = 0;
            int32_t y;"""
    return f"""
void {ns}_step({ns}_state *s, const uint8_t *p)
{{
    {h_t} h[{NS}_H];
    {a_t} a[{NS}_H];
    {g_t} g[2 * {NS}_H];
    uint32_t *cnt = s->counters;
    int i, hh, n, j;

    /* encoder: h0 = requant(enc_b + sum_j (enc_w - z) p_j) */
    for (hh = 0; hh < {NS}_H; ++hh) {{
        const int se = AT_enc_S(hh);
        {term_t(we)} t = AT_enc_b(hh);
        for (j = 0; j < {NS}_D_IN; ++j)
            t += ({term_t(we)})(AT_enc_w(hh, j) - AT_enc_w_z(hh)) * (int32_t)p[j];
        h[hh] = ({h_t})sat({rq(we, mac(we, [('+', 't', 'AT_enc_M(hh)')]), half(we, 'se'), 'se')} + AT_h_z(0), QMIN_H, QMAX_H, &cnt[0]);
    }}
    for (i = 0; i < {NS}_LAYERS; ++i) {{
        const int base = {layout.layer_base(0)} + {nlc} * i;
        for (hh = 0; hh < {NS}_H; ++hh) {{
{decl}
{loop}
            {{  /* y = 2 Re(C x) + D u (the 2 is folded into the multipliers) */
                const int sy = AT_y_S(i, hh);
                const {acc_t(wy)} acc_y = {mac(wy, [('+', 'ty1', 'AT_y_M(i, 0, hh)'), ('-', 'ty2', 'AT_y_M(i, 1, hh)'), ('+', '(AT_D(i, hh) - AT_D_z(i, hh)) * u', 'AT_y_M(i, 2, hh)')])};
                y = sat({rq(wy, 'acc_y', half(wy, 'sy'), 'sy')} + AT_y_z(i), QMIN_Y, QMAX_Y, &cnt[base + {layout.C_Y}]);
            }}
            a[hh] = ({a_t})AT_gelu_lut(i, y - QMIN_Y);
        }}
        /* GLU mixing: g = requant(mix_b + (mix_w - z) (a - z_act)) */
{pre_mix}        for (j = 0; j < 2 * {NS}_H; ++j) {{
            const int sg = AT_glu_S(i, j);
            const int32_t wz = AT_mix_w_z(i, j), az = AT_act_z(i);
            {term_t(wg)} t = AT_mix_b(i, j);
{mix_dot}
            g[j] = ({g_t})sat({rq(wg, mac(wg, [('+', 't', 'AT_glu_M(i, j)')]), half(wg, 'sg'), 'sg')} + AT_glu_z(i), QMIN_GLU, QMAX_GLU, &cnt[base + {layout.C_GLU}]);
        }}
        /* residual: h <- requant(h + g_a * sigmoid(g_b)) */
        for (hh = 0; hh < {NS}_H; ++hh) {{
            const int sh = AT_h_S(i, hh);
            const int32_t sgm = AT_sig_lut(i, g[{NS}_H + hh] - QMIN_GLU);
            const {acc_t(wh)} acc = {mac(wh, [('+', 'h[hh] - AT_h_z(i)', 'AT_h_M(i, 0, hh)'), ('+', '(g[hh] - AT_glu_z(i)) * sgm', 'AT_h_M(i, 1, hh)')])};
            h[hh] = ({h_t})sat({rq(wh, 'acc', half(wh, 'sh'), 'sh')} + AT_h_z(i + 1), QMIN_H, QMAX_H, &cnt[base + {layout.C_H}]);
        }}
    }}
#if {NS}_MEAN_POOL
    if (s->steps < {NS}_MAX_STEPS)  /* past it the readout refuses: the sum stops, so it never overflows */
        for (hh = 0; hh < {NS}_H; ++hh)
            s->pool_acc[hh] += h[hh] - AT_h_z({NS}_LAYERS);
#else
    for (hh = 0; hh < {NS}_H; ++hh)
        s->pool_acc[hh] = h[hh] - AT_h_z({NS}_LAYERS);
#endif
    if (s->steps != UINT32_MAX)
        ++s->steps;
#if INTSSM_DITHER
    s->phase += UINT32_C({c_hex32(WEYL_STEP)});  /* the next step's phase, mod 2^32 */
#endif
}}
"""


def reset_and_state_x(ns: str, dims: dict, pack: str, XB: int, x_store, xr_rd: str, xi_rd: str) -> str:
    """C of ``<ns>_reset`` (the state codes at their zero points; ``pack``: the record of (nr, ni),
    ``x_store``: the writer of one record) and ``<ns>_state_x`` (one mode's codes: ``xr_rd``, ``xi_rd``
    of the record ``xw``); ``XB`` bits per mode."""
    NS = ns.upper()
    return f"""
void {ns}_reset({ns}_state *s)
{{
    /* the plain loops are written through volatile pointers: GCC turns a zeroing loop into a call
     * of memset (-ftree-loop-distribute-patterns), which a freestanding image need not have */
    volatile uint8_t *const xz = s->x;
    volatile {dims['POOL_T']} *const pz = s->pool_acc;
    volatile uint32_t *const cz = s->counters;
    uint32_t k;
    int i, hh, n;
    for (k = 0; k < (uint32_t)sizeof s->x; ++k)
        xz[k] = 0;
    for (i = 0; i < {NS}_LAYERS; ++i)
        for (hh = 0; hh < {NS}_H; ++hh) {{
            const int32_t nr = AT_x_re_z(i, hh), ni = AT_x_im_z(i, hh);
            const uint32_t xw = {pack};
            for (n = 0; n < {NS}_N2; ++n) {{
                const uint32_t xb = (uint32_t)((i * {NS}_H + hh) * {NS}_N2 + n) * {XB}u;
{x_store("s->x + (xb >> 3)", "(xb & 7u)", "                ")}
            }}
        }}
    for (k = 0; k < {NS}_H; ++k)
        pz[k] = 0;
    for (k = 0; k < {NS}_N_COUNTERS; ++k)
        cz[k] = 0;
    s->steps = 0;
#if INTSSM_DITHER
    s->phase = 0;
#endif
}}

void {ns}_state_x(const {ns}_state *s, int i, int hh, int n, int32_t *x_re, int32_t *x_im)
{{
    const uint32_t xb = (uint32_t)((i * {NS}_H + hh) * {NS}_N2 + n) * {XB}u;
    const uint32_t xw = rd32(s->x + (xb >> 3)) >> (xb & 7u);
    *x_re = {xr_rd};
    *x_im = {xi_rd};
}}
"""


def readout(ns: str, dims: dict, wp: SiteWidth, wl: SiteWidth) -> str:
    """C of the streaming readout (``mean_rescale``, ``<ns>_logits``: the pooling and logits sites
    ``wp``, ``wl``) and ``<ns>_classify``, with the counter indices of :mod:`intssm.datapath.layout`."""
    NS = ns.upper()
    nlc = len(layout.LAYER_COUNTERS)
    return f"""#if {NS}_MEAN_POOL

/* The streaming readout's pooling sum after t steps: round_half_up(acc L / t), L = {NS}_SEQ_LEN,
 * as floor((2 acc L + t) / (2 t)) (docs/datapath.md, "Streaming readout"); |2 acc L + t| < 2^63
 * for t <= {NS}_MAX_STEPS, and |result| <= L max|h'|, the pooling site's proved bound. */
static int64_t mean_rescale(int64_t acc, uint32_t t)
{{
    const int64_t num = 2 * acc * (int64_t){NS}_SEQ_LEN + (int64_t)t, den = 2 * (int64_t)t;
    return num >= 0 ? num / den : -((-num - 1) / den) - 1;
}}
#endif

int {ns}_logits(const {ns}_state *s, int32_t *logits_out, uint32_t *counters)
{{
    int32_t pooled[{NS}_H];
    uint32_t c_pool = 0, c_logits = 0;
    const uint32_t steps = s->steps;
    const int ci = {layout.head_base(0)} + {nlc} * {NS}_LAYERS;
    int hh, o, best = 0;
    if (steps == 0)
        return -1;
#if {NS}_MEAN_POOL
    if (steps > {NS}_MAX_STEPS)
        return -1;
#endif
    for (hh = 0; hh < {NS}_H; ++hh) {{
        const int sp = AT_pool_S(hh);
        {dims['POOL_T']} v = s->pool_acc[hh];
#if {NS}_MEAN_POOL
        if (steps != {NS}_SEQ_LEN)
            v = ({dims['POOL_T']})mean_rescale(v, steps);
#endif
        pooled[hh] = sat({rq(wp, mac(wp, [('+', 'v', 'AT_pool_M(hh)')]), half(wp, 'sp'), 'sp')} + AT_pool_z(0),
                         QMIN_POOL, QMAX_POOL, &c_pool) - AT_pool_z(0);
    }}
    for (o = 0; o < {NS}_D_OUT; ++o) {{
        const int sl = AT_logits_S(o);
        {term_t(wl)} t = AT_dec_b(o);
        for (hh = 0; hh < {NS}_H; ++hh)
            t += ({term_t(wl)})(AT_dec_w(o, hh) - AT_dec_w_z(o)) * pooled[hh];
        logits_out[o] = sat({rq(wl, mac(wl, [('+', 't', 'AT_logits_M(o)')]), half(wl, 'sl'), 'sl')} + AT_logits_z(0),
                            QMIN_LOGITS, QMAX_LOGITS, &c_logits);
        if (logits_out[o] > logits_out[best])
            best = o;
    }}
    if (counters)
        for (o = 0; o < {NS}_N_COUNTERS; ++o)
            counters[o] = s->counters[o] + (o == ci + {layout.C_POOL} ? c_pool : 0u) + (o == ci + {layout.C_LOGITS} ? c_logits : 0u);
    return best;
}}

int {ns}_classify({ns}_state *s, const uint8_t *seq, uint32_t L, int32_t *logits_out)
{{
    uint32_t t;
    {ns}_reset(s);
    for (t = 0; t < L; ++t, seq += {NS}_D_IN)
        {ns}_step(s, seq);
    return {ns}_logits(s, logits_out, 0);
}}
"""
