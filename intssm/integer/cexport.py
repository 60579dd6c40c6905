"""C export: the integer model as portable C99 that runs bit-exactly like the simulator.

:func:`write_c` turns the integer arrays of a model (named and re-proved by :mod:`intssm.datapath.layout`) into

* ``intssm_model.h`` -- dimensions, the state struct, the four entry points;
* ``intssm_model.c`` -- every constant as a ``static const`` table of the narrowest C integer type
  that holds its values, and the step / finalize functions, which follow ``_run_one`` in
  :mod:`intssm.integer.sim` site by site (same centred operands, same int64 accumulators, same
  rounding and saturation, same counters);
* ``main.c`` -- a tiny example: one raw sequence on stdin, logits and class on stdout.

The generated model code uses ``<stdint.h>`` and ``<string.h>`` only: no floating point, no
``malloc``, no mutable globals (``.bss`` and ``.data`` are empty; all state is in the caller's
:c:type:`intssm_state`). Portability notes are in the header comment of the generated ``.c``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from intssm.datapath import layout
from intssm import outputs
from intssm.errors import IntssmError

H_FILE, C_FILE, MAIN_FILE = "intssm_model.h", "intssm_model.c", "main.c"

#: Candidate C types, narrowest first: (name, bytes, min, max).
_CTYPES = (
    ("int8_t", 1, -(2**7), 2**7 - 1),
    ("uint8_t", 1, 0, 2**8 - 1),
    ("int16_t", 2, -(2**15), 2**15 - 1),
    ("uint16_t", 2, 0, 2**16 - 1),
    ("int32_t", 4, -(2**31), 2**31 - 1),
    ("uint32_t", 4, 0, 2**32 - 1),
    ("int64_t", 8, -(2**63), 2**63 - 1),
)

#: Every table the C model holds: all arrays of the layout except ``qrange`` and ``x_dither``,
#: which become compile-time constants (``QMIN_*``/``QMAX_*``, ``INTSSM_DITHER``).
TABLES = tuple(k for k in layout.NAMES if k not in ("qrange", "x_dither"))


def _qr_macro(row: str) -> str:
    """Macro suffix of a ``qrange`` row: ``x_re`` -> ``XRE``."""
    return row.upper().replace("_", "")


def ctype_for(lo: int, hi: int) -> tuple[str, int]:
    """(C type, bytes) of the narrowest exact-width integer type holding [lo, hi]."""
    for name, nb, tmin, tmax in _CTYPES:
        if tmin <= lo and hi <= tmax:
            return name, nb
    raise IntssmError(f"values in [{lo}, {hi}] do not fit a 64-bit integer")


def _lit(v: int) -> str:
    """A C integer constant of value ``v`` that is well-typed in any initializer."""
    if -(2**31) < v < 2**31:
        return str(v)
    if v == -(2**31):
        return "(-2147483647 - 1)"
    if 0 <= v < 2**32:
        return f"UINT32_C({v})"
    return f"INT64_C({v})"


def _check(arrays: dict, manifest_like: dict) -> tuple[dict, dict]:
    """The arrays re-proved by :func:`intssm.datapath.layout.validate` (int64) and the dimensions."""
    from intssm.datapath.modelconfig import ModelConfig
    from intssm.datapath.qspec import QuantConfig

    try:
        cfg = ModelConfig.from_dict(manifest_like.get("model_config"))
        qcfg = QuantConfig.from_dict(manifest_like.get("quant_config"))
        seq_len = manifest_like.get("seq_len")
        a = layout.validate(arrays, cfg, qcfg, seq_len)
        if manifest_like.get("counters", layout.counter_names(cfg.n_layers)) != layout.counter_names(cfg.n_layers):
            raise IntssmError(f"counters must be the {layout.n_counters(cfg.n_layers)} names of intssm.datapath.layout.counter_names")
    except IntssmError as e:
        raise IntssmError(f"C export: {e}") from None
    dims = {"H": cfg.d_model, "N2": cfg.d_state // 2, "LAYERS": cfg.n_layers, "D_IN": cfg.d_input,
            "D_OUT": cfg.d_output, "MEAN_POOL": int(cfg.pool == "mean"), "SEQ_LEN": seq_len,
            "N_COUNTERS": layout.n_counters(cfg.n_layers)}
    return a, dims


def table_layout(arrays: dict) -> dict:
    """name -> (C type, element count, bytes) of every constant table :func:`write_c` emits."""
    out = {}
    for k in TABLES:
        v = np.asarray(arrays[k], dtype=np.int64)
        ct, nb = ctype_for(int(v.min()), int(v.max()))
        out[k] = (ct, int(v.size), int(v.size) * nb)
    return out


def rodata_bytes_estimate(arrays: dict) -> int:
    """Bytes of constant tables (flash / ``.rodata``), without alignment padding."""
    return sum(nb for _, _, nb in table_layout(arrays).values())


def _init(v: np.ndarray, indent: str = "    ", per_line: int = 16) -> str:
    """A brace-nested C initializer for ``v`` (one brace level per dimension)."""
    if v.ndim == 1:
        vals = [_lit(int(x)) for x in v]
        lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
        if len(lines) <= 1:
            return "{" + (lines[0] if lines else "") + "}"
        return "{\n" + ",\n".join(indent + "    " + ln for ln in lines) + "\n" + indent + "}"
    inner = [_init(x, indent + "    ", per_line) for x in v]
    return "{\n" + ",\n".join(indent + "    " + s for s in inner) + "\n" + indent + "}"


def _state_type(qr: np.ndarray, row: int) -> str:
    return ctype_for(int(qr[row, 0]), int(qr[row, 1]))[0]


def _input_note(iq: dict | None) -> str:
    """The header's description of the inputs: raw uint8 codes, or the input quantizer of float data."""
    if iq is None:
        return " * Inputs: raw uint8 values (real value p / 255), INTSSM_D_IN per step.\n"
    rows = "\n".join(f" *   channel {j}: lo {lo:.9g}, scale {sc:.9g}" for j, (lo, sc) in enumerate(zip(iq["lo"], iq["scale"])))
    return (f" * Inputs: float features quantized per channel j before intssm_step (intssm.datapath.inputq):\n"
            f" *   p_j = clamp(round_half_up((u_j - lo_j) / scale_j), 0, {2 ** int(iq['bits']) - 1})   ({iq['bits']}-bit codes)\n"
            f"{rows}\n")


def _header(dims: dict, xre_t: str, xim_t: str, counters: list, iq: dict | None = None) -> str:
    d = dims
    names = "\n".join(f" *   [{i}] {str(n).replace('*/', '* /')}" for i, n in enumerate(counters))
    return f"""/* intssm_model.h -- generated by intssm (C export). Do not edit.
 *
 * Integer-only S4D classifier, bit-exact with intssm's simulator (docs/datapath.md).
 * Usage: intssm_reset(&s); for each step t: intssm_step(&s, p_t); intssm_logits(&s, logits, counters);
 * or intssm_classify(seq, L, logits) for a whole sequence (state on the stack: sizeof(intssm_state)).
 * A sequence of L steps runs exactly L steps (any L >= 1 with last-step pooling): no padding.
{_input_note(iq)} *
 * Saturation counters (INTSSM_N_COUNTERS), in order:
{names}
 */
#ifndef INTSSM_MODEL_H
#define INTSSM_MODEL_H

#include <stdint.h>

#define INTSSM_H {d['H']}            /* channels of the residual stream (d_model) */
#define INTSSM_N2 {d['N2']}           /* complex modes per channel (d_state / 2) */
#define INTSSM_LAYERS {d['LAYERS']}
#define INTSSM_D_IN {d['D_IN']}         /* uint8 input codes per time step */
#define INTSSM_D_OUT {d['D_OUT']}        /* classes (logits) */
#define INTSSM_N_COUNTERS {d['N_COUNTERS']}
#define INTSSM_MEAN_POOL {d['MEAN_POOL']}     /* 1: mean over time, 0: last step */
#define INTSSM_SEQ_LEN {d['SEQ_LEN']}      /* length the model was quantized for (mean pooling divides by it) */

typedef struct {{
    uint32_t phase;  /* k * 0x9E3779B9 mod 2^32 at step k: the step phase of the dithered state rounding */
    {xre_t} x_re[INTSSM_LAYERS][INTSSM_H][INTSSM_N2];  /* state codes, real parts */
    {xim_t} x_im[INTSSM_LAYERS][INTSSM_H][INTSSM_N2];  /* state codes, imaginary parts */
    int64_t pool_acc[INTSSM_H];  /* sum over time (mean) or last value (last) of the centred output */
    int64_t counters[INTSSM_N_COUNTERS];  /* saturation events so far */
}} intssm_state;

/* State codes at their zero points (real value 0), accumulators and counters at 0. */
void intssm_reset(intssm_state *s);
/* One time step: p points to INTSSM_D_IN raw pixels. The no-overflow proof covers
 * INTSSM_SEQ_LEN steps with mean pooling (any number with last-step pooling). */
void intssm_step(intssm_state *s, const uint8_t *p);
/* Finalize: pooling requantization and decoder. Writes INTSSM_D_OUT logit codes; if counters is
 * not NULL, writes INTSSM_N_COUNTERS saturation counts (the state's plus pool and logits). */
void intssm_logits(const intssm_state *s, int32_t *logits_out, int64_t *counters);
/* A whole sequence seq (L x INTSSM_D_IN, row-major): the class (first index of the largest logit),
 * logits in logits_out (if not NULL). Returns -1 if L < 1, or if L != INTSSM_SEQ_LEN with mean pooling. */
int intssm_classify(const uint8_t *seq, int32_t L, int32_t *logits_out);

#endif /* INTSSM_MODEL_H */
"""


_BODY = r"""
/* Floor division by 2^s after adding the rounding constant 2^(s-1): rounds half up (ties toward
 * +inf), exactly intssm.datapath.fixedpoint.rounding_rshift. Right-shifting a negative signed integer is
 * implementation-defined in C99 (6.5.7p5), so negative values are floored through the
 * non-negative -v - 1: floor(v / 2^s) = -(((-v - 1) >> s) + 1) for v < 0. |v| < 2^53 (proved when
 * the datapath is built), so -v never overflows. Shifts are in [0, 62]. */
static int64_t rounding_rshift(int64_t v, int s)
{
    if (s == 0)
        return v;
    v += (int64_t)1 << (s - 1);
    return v >= 0 ? (v >> s) : -((-v - 1) >> s) - 1;
}

/* floor((v + d) / 2^s) for an offset d in [0, 2^s): the state's rounding (d = 2^(s-1) is
 * rounding_rshift), exactly intssm.datapath.fixedpoint.offset_rshift; negative values floored as above. */
static int64_t offset_rshift(int64_t v, int64_t d, int s)
{
    v += d;
    return v >= 0 ? (v >> s) : -((-v - 1) >> s) - 1;
}

/* The dither offset of lane j at step phase ph, for shifts s in [0, 32]:
 * ((ph + j * 0x6A09E667) mod 2^32) >> (32 - s), exactly intssm.datapath.fixedpoint.weyl_offset (uint32_t
 * arithmetic wraps mod 2^32; s = 0 is kept apart because a 32-bit shift of a uint32_t is undefined). */
#if INTSSM_DITHER
static int64_t weyl_offset(uint32_t ph, uint32_t j, int s)
{
    const uint32_t w = ph + j * UINT32_C(0x6A09E667);
    return s == 0 ? 0 : (int64_t)(w >> (32 - s));
}
#endif

/* Clamp to [lo, hi]; every clamp increments *cnt. */
static int64_t saturate(int64_t v, int64_t lo, int64_t hi, int64_t *cnt)
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

void intssm_reset(intssm_state *s)
{
    int i, hh, n;
    for (i = 0; i < INTSSM_LAYERS; ++i)
        for (hh = 0; hh < INTSSM_H; ++hh)
            for (n = 0; n < INTSSM_N2; ++n) {
                s->x_re[i][hh][n] = (XRE_T)x_re_z[i][hh];
                s->x_im[i][hh][n] = (XIM_T)x_im_z[i][hh];
            }
    memset(s->pool_acc, 0, sizeof s->pool_acc);
    memset(s->counters, 0, sizeof s->counters);
    s->phase = 0;
}

void intssm_step(intssm_state *s, const uint8_t *p)
{
    int64_t h[INTSSM_H], a[INTSSM_H], g[2 * INTSSM_H];
    int64_t *cnt = s->counters;
    int i, hh, n, j;

    /* encoder: h0 = requant(enc_b + sum_j (enc_w - z) p_j) */
    for (hh = 0; hh < INTSSM_H; ++hh) {
        int64_t acc = (int64_t)enc_b[hh];
        for (j = 0; j < INTSSM_D_IN; ++j)
            acc += ((int64_t)enc_w[hh][j] - enc_w_z[hh]) * (int64_t)p[j];
        h[hh] = saturate(rounding_rshift(acc * enc_M[hh], (int)enc_S[hh]) + h_z[0], QMIN_H, QMAX_H, &cnt[0]);
    }
    for (i = 0; i < INTSSM_LAYERS; ++i) {
        const int base = @LAYER_BASE@;
        for (hh = 0; hh < INTSSM_H; ++hh) {
            const int64_t u = h[hh] - h_z[i];
            const int64_t zr = x_re_z[i][hh], zi = x_im_z[i][hh];
            const int64_t azr = A_re_z[i][hh], azi = A_im_z[i][hh], bz = B_z[i][hh], cz = C_z[i][hh];
            const int sr = (int)x_re_S[i][hh], si = (int)x_im_S[i][hh];
            int64_t ty1 = 0, ty2 = 0, acc_y, y;
            for (n = 0; n < INTSSM_N2; ++n) {
                const int64_t ar = (int64_t)A_re[i][hh][n] - azr;
                const int64_t ai = (int64_t)A_im[i][hh][n] - azi;
                const int64_t xr = (int64_t)s->x_re[i][hh][n] - zr;
                const int64_t xi = (int64_t)s->x_im[i][hh][n] - zi;
                /* x_re' = Are x_re - Aim x_im + Bre u ;  x_im' = Are x_im + Aim x_re + Bim u */
                const int64_t acc_r = (ar * xr) * x_re_M[i][0][hh] - (ai * xi) * x_re_M[i][1][hh]
                    + (((int64_t)B_re[i][hh][n] - bz) * u) * x_re_M[i][2][hh];
                const int64_t acc_i = (ar * xi) * x_im_M[i][0][hh] + (ai * xr) * x_im_M[i][1][hh]
                    + (((int64_t)B_im[i][hh][n] - bz) * u) * x_im_M[i][2][hh];
#if INTSSM_DITHER  /* lanes j = ((2 i + part) H + hh) N2 + n */
                const int64_t dr = weyl_offset(s->phase, (uint32_t)(((2 * i) * INTSSM_H + hh) * INTSSM_N2 + n), sr);
                const int64_t di = weyl_offset(s->phase, (uint32_t)(((2 * i + 1) * INTSSM_H + hh) * INTSSM_N2 + n), si);
#else  /* half up */
                const int64_t dr = sr ? (int64_t)1 << (sr - 1) : 0;
                const int64_t di = si ? (int64_t)1 << (si - 1) : 0;
#endif
                const int64_t nr = saturate(offset_rshift(acc_r, dr, sr) + zr, QMIN_XRE, QMAX_XRE, &cnt[base + @C_XRE@]);
                const int64_t ni = saturate(offset_rshift(acc_i, di, si) + zi, QMIN_XIM, QMAX_XIM, &cnt[base + @C_XIM@]);
                s->x_re[i][hh][n] = (XRE_T)nr;
                s->x_im[i][hh][n] = (XIM_T)ni;
                ty1 += (nr - zr) * ((int64_t)C_re[i][hh][n] - cz);
                ty2 += (ni - zi) * ((int64_t)C_im[i][hh][n] - cz);
            }
            /* y = 2 Re(C x) + D u (the 2 is folded into the multipliers) */
            acc_y = ty1 * y_M[i][0][hh] - ty2 * y_M[i][1][hh] + (((int64_t)D[i][hh] - D_z[i][hh]) * u) * y_M[i][2][hh];
            y = saturate(rounding_rshift(acc_y, (int)y_S[i][hh]) + y_z[i], QMIN_Y, QMAX_Y, &cnt[base + @C_Y@]);
            a[hh] = (int64_t)gelu_lut[i][y - QMIN_Y];
        }
        /* GLU mixing: g = requant(mix_b + (mix_w - z) (a - z_act)) */
        for (j = 0; j < 2 * INTSSM_H; ++j) {
            int64_t acc = (int64_t)mix_b[i][j];
            for (hh = 0; hh < INTSSM_H; ++hh)
                acc += ((int64_t)mix_w[i][j][hh] - mix_w_z[i][j]) * (a[hh] - act_z[i]);
            g[j] = saturate(rounding_rshift(acc * glu_M[i][j], (int)glu_S[i][j]) + glu_z[i], QMIN_GLU, QMAX_GLU, &cnt[base + @C_GLU@]);
        }
        /* residual: h <- requant(h + g_a * sigmoid(g_b)) */
        for (hh = 0; hh < INTSSM_H; ++hh) {
            const int64_t sg = (int64_t)sig_lut[i][g[INTSSM_H + hh] - QMIN_GLU];
            const int64_t acc = (h[hh] - h_z[i]) * h_M[i][0][hh] + ((g[hh] - glu_z[i]) * sg) * h_M[i][1][hh];
            h[hh] = saturate(rounding_rshift(acc, (int)h_S[i][hh]) + h_z[i + 1], QMIN_H, QMAX_H, &cnt[base + @C_H@]);
        }
    }
    for (hh = 0; hh < INTSSM_H; ++hh) {
#if INTSSM_MEAN_POOL
        s->pool_acc[hh] += h[hh] - h_z[INTSSM_LAYERS];
#else
        s->pool_acc[hh] = h[hh] - h_z[INTSSM_LAYERS];
#endif
    }
    s->phase += UINT32_C(0x9E3779B9);  /* the next step's phase, mod 2^32 */
}

void intssm_logits(const intssm_state *s, int32_t *logits_out, int64_t *counters)
{
    int64_t c[INTSSM_N_COUNTERS], pooled[INTSSM_H];
    const int ci = @HEAD_BASE@;
    int hh, o;
    memcpy(c, s->counters, sizeof c);
    for (hh = 0; hh < INTSSM_H; ++hh)
        pooled[hh] = saturate(rounding_rshift(s->pool_acc[hh] * pool_M[hh], (int)pool_S[hh]) + pool_z[0],
                              QMIN_POOL, QMAX_POOL, &c[ci + @C_POOL@]) - pool_z[0];
    for (o = 0; o < INTSSM_D_OUT; ++o) {
        int64_t acc = (int64_t)dec_b[o];
        for (hh = 0; hh < INTSSM_H; ++hh)
            acc += ((int64_t)dec_w[o][hh] - dec_w_z[o]) * pooled[hh];
        logits_out[o] = (int32_t)saturate(rounding_rshift(acc * logits_M[o], (int)logits_S[o]) + logits_z[0],
                                          QMIN_LOGITS, QMAX_LOGITS, &c[ci + @C_LOGITS@]);
    }
    if (counters)
        memcpy(counters, c, sizeof c);
}

int intssm_classify(const uint8_t *seq, int32_t L, int32_t *logits_out)
{
    intssm_state s;
    int32_t lg[INTSSM_D_OUT];
    int32_t t;
    int o, best = 0;
    if (L < 1 || (INTSSM_MEAN_POOL && L != INTSSM_SEQ_LEN))
        return -1;
    intssm_reset(&s);
    for (t = 0; t < L; ++t)
        intssm_step(&s, seq + (long)t * INTSSM_D_IN);
    intssm_logits(&s, lg, 0);
    for (o = 1; o < INTSSM_D_OUT; ++o)
        if (lg[o] > lg[best])
            best = o;
    if (logits_out)
        memcpy(logits_out, lg, sizeof lg);
    return best;
}
"""


def _body() -> str:
    """The step and finalize functions, with the counter indices of :mod:`intssm.datapath.layout`."""
    nlc = len(layout.LAYER_COUNTERS)
    subs = {"@LAYER_BASE@": f"{layout.layer_base(0)} + {nlc} * i", "@HEAD_BASE@": f"{layout.head_base(0)} + {nlc} * INTSSM_LAYERS",
            "@C_XRE@": layout.C_XRE, "@C_XIM@": layout.C_XIM, "@C_Y@": layout.C_Y, "@C_GLU@": layout.C_GLU,
            "@C_H@": layout.C_H, "@C_POOL@": layout.C_POOL, "@C_LOGITS@": layout.C_LOGITS}
    text = _BODY
    for k, v in subs.items():
        text = text.replace(k, str(v))
    return text


def _source(a: dict, xre_t: str, xim_t: str) -> str:
    tables = table_layout(a)
    total = sum(nb for _, _, nb in tables.values())
    qr = a["qrange"]
    out = [f"""/* intssm_model.c -- generated by intssm (C export). Do not edit.
 *
 * Integer-only S4D datapath (docs/datapath.md), bit-exact with intssm.integer.sim (_run_one).
 *
 * Portability (C99, freestanding apart from <stdint.h> and <string.h>):
 *  - no floating point, no malloc, no mutable globals: all state lives in the caller's intssm_state;
 *  - all arithmetic is on int64_t; every operand is widened before it is used, and every
 *    accumulator stays below 2^53 in magnitude (proved per site when the datapath is built), so
 *    no signed overflow can occur;
 *  - rounding shifts never right-shift a negative number (implementation-defined in C99): see
 *    rounding_rshift below;
 *  - exact-width types are two's complement by definition (C99 7.18.1.1).
 *
 * Constant tables: {len(tables)} tables, {total} bytes (each of the narrowest exact-width type that
 * holds its values), plus alignment padding.
 */
#include <stdint.h>
#include <string.h>

#include "{H_FILE}"

/* code ranges [qmin, qmax] of every quantized tensor */"""]
    for j, n in enumerate(map(_qr_macro, layout.QRANGE_ROWS)):
        out.append(f"#define QMIN_{n} ({_lit(int(qr[j, 0]))})\n#define QMAX_{n} ({_lit(int(qr[j, 1]))})")
    out.append(f"\ntypedef {xre_t} XRE_T;\ntypedef {xim_t} XIM_T;\n")
    out.append(f"/* 1: the state update rounds with the Weyl dither (docs/datapath.md, step 2); 0: half up */\n"
               f"#define INTSSM_DITHER {int(a['x_dither'][0])}\n")
    out.append("""/* Keep every table in the object even where the compiler folds all of its reads, so that the
 * flash footprint is exactly the table sizes above (plus padding). */
#if defined(__GNUC__)
#define INTSSM_TABLE __attribute__((used))
#else
#define INTSSM_TABLE
#endif
""")
    for k in TABLES:
        ct, count, nb = tables[k]
        v = a[k]
        dims_txt = "".join(f"[{s}]" for s in v.shape)
        out.append(f"/* {k}: {count} x {ct} = {nb} bytes */\n"
                   f"INTSSM_TABLE static const {ct} {k}{dims_txt} = {_init(v, '')};\n")
    out.append(_body())
    return "\n".join(out)


_MAIN = r"""/* main.c -- example for the generated intssm model (generated; libc: stdio only here).
 *
 * Reads one sequence of INTSSM_SEQ_LEN x INTSSM_D_IN raw bytes (row-major: step by step) from
 * stdin, prints the integer logit codes and the class.
 *   cc -std=c99 -O2 main.c intssm_model.c -o intssm_demo && ./intssm_demo < digit.bin
 */
#include <stdio.h>

#include "intssm_model.h"

int main(void)
{
    uint8_t seq[INTSSM_SEQ_LEN * INTSSM_D_IN];
    int32_t logits[INTSSM_D_OUT];
    size_t got = fread(seq, 1, sizeof seq, stdin);
    int o, cls;
    if (got != sizeof seq) {
        fprintf(stderr, "error: expected %lu bytes (%d steps x %d features) on stdin, got %lu\n",
                (unsigned long)sizeof seq, INTSSM_SEQ_LEN, INTSSM_D_IN, (unsigned long)got);
        return 2;
    }
    cls = intssm_classify(seq, INTSSM_SEQ_LEN, logits);
    printf("logits:");
    for (o = 0; o < INTSSM_D_OUT; ++o)
        printf(" %ld", (long)logits[o]);
    printf("\nclass: %d\n", cls);
    return 0;
}
"""


def write_c(arrays: dict, manifest_like: dict, out_dir: Path) -> list[Path]:
    """Write ``intssm_model.h``, ``intssm_model.c`` and ``main.c`` into ``out_dir`` (each atomically);
    returns the paths written. An existing ``main.c`` that is not the generated example is kept.

    ``arrays``: the integer model by name (:func:`intssm.integer.export.integer_model` or
    :func:`intssm.integer.export.load`); ``manifest_like``: ``model_config`` (d_model, d_state, n_layers,
    d_input, d_output, pool), ``seq_len``, ``counters`` and optionally ``input`` (the input
    quantizer of float data, described in the header).
    """
    a, dims = _check(arrays, manifest_like)
    out_dir = outputs.check_dir(out_dir, what="C export directory")
    xre_t, xim_t = _state_type(a["qrange"], layout.R_XRE), _state_type(a["qrange"], layout.R_XIM)
    files = {H_FILE: _header(dims, xre_t, xim_t, layout.counter_names(dims["LAYERS"]), manifest_like.get("input")),
             C_FILE: _source(a, xre_t, xim_t), MAIN_FILE: _MAIN}
    main = out_dir / MAIN_FILE
    if main.is_file() and not main.read_text(errors="replace").startswith(_MAIN.splitlines()[0]):
        del files[MAIN_FILE]  # the user's own main.c (the example is only created): kept
        print(f"keeping {main} (not the generated example)", file=sys.stderr)
    paths = []
    for name, text in files.items():
        paths.append(outputs.write_text(out_dir / name, text))
    return paths


def c_storage(arrays: dict, n_counters: int) -> dict:
    """Bytes the C export occupies: flash = its ``static const`` tables (.rodata), RAM = one
    ``intssm_state`` (the only mutable memory; .data and .bss are empty). Padding not included for
    flash (the compiler aligns each table); the state struct's size is exact for LP64/ILP32 ABIs."""
    qr = arrays["qrange"]
    nl, H, N2 = arrays["A_re"].shape
    xre_b = ctype_for(int(qr[layout.R_XRE, 0]), int(qr[layout.R_XRE, 1]))[1]
    xim_b = ctype_for(int(qr[layout.R_XIM, 0]), int(qr[layout.R_XIM, 1]))[1]
    states = 4 + nl * H * N2 * xre_b  # the uint32_t step phase first: x_re needs no padding after it
    states += -states % xim_b  # x_im aligned to its type
    states += nl * H * N2 * xim_b
    states += -states % 8  # int64 members follow
    return {"c_flash_bytes": rodata_bytes_estimate(arrays), "c_ram_bytes": states + 8 * H + 8 * n_counters}
