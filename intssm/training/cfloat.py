"""The float32 reference in C: the same S4D classifier, recurrent mode, in single precision.

What the integer export is measured against on a microcontroller (``intssm export-c --target``):
the float model a deployer would otherwise flash, with the same entry points as the integer
export (:mod:`intssm.integer.cexport`) so that one harness runs both. Weights are the model's
float32 parameters after the zero-order hold (Abar, Bbar computed in float64, then rounded);
GELU is the erf form (``erff``), the GLU gate ``1 / (1 + expf(-z))``. Not bit-exact with anything:
checked against the Torch model's recurrent mode within float32 rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from intssm import outputs
from intssm.errors import IntssmError

H_FILE, C_FILE = "intssm_model.h", "intssm_model.c"


def _floats(v, indent: str = "") -> str:
    """A brace-nested C initializer of float32 values (shortest repr that round-trips)."""
    v = np.asarray(v, dtype=np.float32)
    if v.ndim > 1:
        return "{\n" + ",\n".join(indent + "    " + _floats(x, indent + "    ") for x in v) + "\n" + indent + "}"
    items = [f"{float(x)!r}f" for x in v]
    lines = [", ".join(items[i:i + 8]) for i in range(0, len(items), 8)]
    return "{" + (",\n" + indent + "     ").join(lines) + "}"


@torch.no_grad()
def parameters(model) -> dict:
    """name -> float32 array of every constant the float C model holds."""
    cfg = model.cfg
    p = {"enc_w": model.encoder.weight, "enc_b": model.encoder.bias, "dec_w": model.decoder.weight,
         "dec_b": model.decoder.bias}
    out = {k: v.detach().double().numpy() for k, v in p.items()}
    A_re, A_im, B_re, B_im, C_re, C_im, D, mw, mb = ([] for _ in range(9))
    for layer in model.layers:
        Abar, Bbar, C, Dv = layer.ssm.discrete(torch.float64)
        A_re.append(Abar.real.numpy()), A_im.append(Abar.imag.numpy())
        B_re.append(Bbar.real.numpy()), B_im.append(Bbar.imag.numpy())
        C_re.append(C.real.numpy()), C_im.append(C.imag.numpy())
        D.append(Dv.numpy()), mw.append(layer.mix.weight.double().numpy()), mb.append(layer.mix.bias.double().numpy())
    out |= {"A_re": A_re, "A_im": A_im, "B_re": B_re, "B_im": B_im, "C_re": C_re, "C_im": C_im, "D": D,
            "mix_w": mw, "mix_b": mb}
    out = {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}
    bad = [k for k, v in out.items() if not np.isfinite(v).all()]
    if bad:
        raise IntssmError(f"float C reference: non-finite parameters in {bad}")
    if cfg.n_layers < 1:
        raise IntssmError("float C reference: no layers")
    return out


_BODY = r"""
static float gelu(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
static float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

void intssm_reset(intssm_state *s)
{
    memset(s, 0, sizeof *s);
}

void intssm_step(intssm_state *s, const uint8_t *p)
{
    float h[INTSSM_H], a[INTSSM_H], z[2 * INTSSM_H];
    int i, hh, n, j;
    for (hh = 0; hh < INTSSM_H; ++hh) {
        float acc = enc_b[hh];
        for (j = 0; j < INTSSM_D_IN; ++j)
            acc += enc_w[hh][j] * ((float)p[j] * (1.0f / 255.0f));
        h[hh] = acc;
    }
    for (i = 0; i < INTSSM_LAYERS; ++i) {
        for (hh = 0; hh < INTSSM_H; ++hh) {
            const float u = h[hh];
            float y = 0.0f;
            float *xr = s->x_re[i][hh], *xi = s->x_im[i][hh];
            for (n = 0; n < INTSSM_N2; ++n) {
                const float ar = A_re[i][hh][n], ai = A_im[i][hh][n];
                const float nr = ar * xr[n] - ai * xi[n] + B_re[i][hh][n] * u;
                const float ni = ar * xi[n] + ai * xr[n] + B_im[i][hh][n] * u;
                xr[n] = nr;
                xi[n] = ni;
                y += C_re[i][hh][n] * nr - C_im[i][hh][n] * ni;
            }
            a[hh] = gelu(2.0f * y + D[i][hh] * u);
        }
        for (j = 0; j < 2 * INTSSM_H; ++j) {
            float acc = mix_b[i][j];
            for (hh = 0; hh < INTSSM_H; ++hh)
                acc += mix_w[i][j][hh] * a[hh];
            z[j] = acc;
        }
        for (hh = 0; hh < INTSSM_H; ++hh)
            h[hh] += z[hh] * sigmoid(z[INTSSM_H + hh]);
    }
    for (hh = 0; hh < INTSSM_H; ++hh) {
#if INTSSM_MEAN_POOL
        s->pool_acc[hh] += h[hh];
#else
        s->pool_acc[hh] = h[hh];
#endif
    }
    s->steps += 1;
}

void intssm_logits(const intssm_state *s, float *logits_out)
{
    int hh, o;
    float pooled[INTSSM_H];
    for (hh = 0; hh < INTSSM_H; ++hh)
        pooled[hh] = INTSSM_MEAN_POOL ? s->pool_acc[hh] / (float)s->steps : s->pool_acc[hh];
    for (o = 0; o < INTSSM_D_OUT; ++o) {
        float acc = dec_b[o];
        for (hh = 0; hh < INTSSM_H; ++hh)
            acc += dec_w[o][hh] * pooled[hh];
        logits_out[o] = acc;
    }
}
"""


def write_float_c(model, out_dir: Path) -> list[Path]:
    """Write the float32 ``intssm_model.h`` / ``.c`` of ``model`` (an S4DModel for raw uint8 inputs,
    value p / 255) into ``out_dir``; returns the paths written."""
    cfg = model.cfg
    prm = parameters(model)
    out_dir = outputs.check_dir(out_dir, what="float C directory")
    H, N2, nl = cfg.d_model, cfg.d_state // 2, cfg.n_layers
    header = f"""/* intssm_model.h -- float32 reference, generated by intssm. Do not edit.
 * The S4D classifier in recurrent mode, single precision (intssm.training.cfloat). */
#ifndef INTSSM_MODEL_H
#define INTSSM_MODEL_H
#include <stdint.h>
#define INTSSM_FLOAT 1
#define INTSSM_H {H}
#define INTSSM_N2 {N2}
#define INTSSM_LAYERS {nl}
#define INTSSM_D_IN {cfg.d_input}
#define INTSSM_D_OUT {cfg.d_output}
#define INTSSM_MEAN_POOL {int(cfg.pool == 'mean')}
typedef struct {{
    float x_re[INTSSM_LAYERS][INTSSM_H][INTSSM_N2];
    float x_im[INTSSM_LAYERS][INTSSM_H][INTSSM_N2];
    float pool_acc[INTSSM_H];
    uint32_t steps;
}} intssm_state;
void intssm_reset(intssm_state *s);
void intssm_step(intssm_state *s, const uint8_t *p);  /* p: INTSSM_D_IN raw bytes, value p / 255 */
void intssm_logits(const intssm_state *s, float *logits_out);
#endif
"""
    shapes = {"enc_w": (H, cfg.d_input), "enc_b": (H,), "A_re": (nl, H, N2), "A_im": (nl, H, N2), "B_re": (nl, H, N2),
              "B_im": (nl, H, N2), "C_re": (nl, H, N2), "C_im": (nl, H, N2), "D": (nl, H), "mix_w": (nl, 2 * H, H),
              "mix_b": (nl, 2 * H), "dec_w": (cfg.d_output, H), "dec_b": (cfg.d_output,)}
    tables = []
    for k, shp in shapes.items():
        if prm[k].shape != shp:
            raise IntssmError(f"float C reference: {k} has shape {prm[k].shape}, expected {shp}")
        tables.append(f"static const float {k}{''.join(f'[{s}]' for s in shp)} = {_floats(prm[k])};")
    n_floats = sum(int(np.prod(s)) for s in shapes.values())
    source = (f"/* intssm_model.c -- float32 reference, generated by intssm. {n_floats} float32 constants "
              f"({4 * n_floats} bytes). */\n#include <math.h>\n#include <string.h>\n#include \"{H_FILE}\"\n\n"
              + "\n".join(tables) + "\n" + _BODY)
    return [outputs.write_text(out_dir / H_FILE, header), outputs.write_text(out_dir / C_FILE, source)]
