"""Helpers of the C export tests (test_cexport, test_capi, test_cinput, test_mcu, test_own_data):
compile the generated C with a host harness, run it on input codes, and compare logits, counters
and final state with the simulator's (``==``); draw a random quantized case."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume
from hypothesis import strategies as st
from strategies import inputs

from intssm.errors import IntssmError
from intssm.integer import cexport
from intssm.integer.export import from_quantized
from intssm.integer.sim import simulate
from intssm.training.ptq import ptq


GCC = shutil.which("gcc")
SIZE = shutil.which("size")
needs_gcc = pytest.mark.skipif(GCC is None and not os.environ.get("CI"), reason="gcc not on PATH (CI installs it and never skips)")
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Wconversion", "-Wsign-conversion", "-Werror", "-O2"]



def quantize(m, qcfg, calib):
    """ptq with one Torch thread: on a busy 2-core machine an oversubscribed calibration can be 100x
    slower. Set before every call: Numba's OpenMP layer may reset the shared OpenMP thread count."""
    torch.set_num_threads(1)
    return ptq(m, qcfg, calib)


HARNESS = r"""
/* test harness: harness IN OUT B L -- B sequences of L x INTSSM_D_IN bytes in IN; for each, int64
 * records in OUT: logits (step/logits API), counters, final x_re, final x_im, class and logits
 * (intssm_classify). */
#include <stdio.h>
#include <stdlib.h>
#include "intssm_model.h"

static void put(FILE *f, int64_t v) { fwrite(&v, sizeof v, 1, f); }

int main(int argc, char **argv)
{
    FILE *fi, *fo;
    unsigned long B, L, b, t;
    int i, h, n, o, cls;
    int32_t xr, xi;
    uint8_t *seq;
    static intssm_state s, s2;
    int32_t lg[INTSSM_D_OUT], lg2[INTSSM_D_OUT];
    uint32_t cnt[INTSSM_N_COUNTERS];
    if (argc != 5) return 2;
    fi = fopen(argv[1], "rb");
    fo = fopen(argv[2], "wb");
    B = strtoul(argv[3], 0, 10);
    L = strtoul(argv[4], 0, 10);
    seq = malloc((size_t)(L * INTSSM_D_IN));
    if (!fi || !fo || !seq) return 3;
    for (b = 0; b < B; ++b) {
        if (fread(seq, 1, (size_t)(L * INTSSM_D_IN), fi) != (size_t)(L * INTSSM_D_IN)) return 4;
        intssm_reset(&s);
        if (intssm_logits(&s, lg, cnt) != -1) return 5;  /* nothing to read before the first step */
        for (t = 0; t < L; ++t) intssm_step(&s, seq + t * INTSSM_D_IN);
        cls = intssm_logits(&s, lg, cnt);
        for (o = 0; o < INTSSM_D_OUT; ++o) if (lg[o] > lg[cls]) return 6;
        for (o = 0; o < INTSSM_D_OUT; ++o) put(fo, lg[o]);
        for (o = 0; o < INTSSM_N_COUNTERS; ++o) put(fo, cnt[o]);
        for (i = 0; i < INTSSM_LAYERS; ++i) for (h = 0; h < INTSSM_H; ++h) for (n = 0; n < INTSSM_N2; ++n) {
            intssm_state_x(&s, i, h, n, &xr, &xi);
            put(fo, xr);
        }
        for (i = 0; i < INTSSM_LAYERS; ++i) for (h = 0; h < INTSSM_H; ++h) for (n = 0; n < INTSSM_N2; ++n) {
            intssm_state_x(&s, i, h, n, &xr, &xi);
            put(fo, xi);
        }
        cls = intssm_classify(&s2, seq, (uint32_t)L, lg2);
        put(fo, cls);
        for (o = 0; o < INTSSM_D_OUT; ++o) put(fo, lg2[o]);
    }
    free(seq);
    fclose(fi);
    return fclose(fo) != 0;
}
"""


#: Undefined behaviour (signed overflow, shifts out of range, out-of-bounds tables) ends the run.
UBSAN = ["-fsanitize=undefined", "-fno-sanitize-recover=all"]


def gcc(*args: str, cwd: Path, extra=()):
    r = subprocess.run([GCC, *CFLAGS, *extra, *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"gcc {' '.join(args)} failed:\n{r.stderr[-4000:]}"


def build_harness(m, d: Path, extra=(), state_layout: str = "packed") -> Path:
    """The C export of IntModel ``m`` in ``d``, compiled with the test harness (stdin/stdout of int64 records)."""
    cexport.write_c(m, d, state_layout)
    (d / "harness.c").write_text(HARNESS)
    gcc("harness.c", "intssm_model.c", "-o", "harness", cwd=d, extra=extra)
    return d / "harness"


def run_c(exe: Path, P: np.ndarray, m) -> dict:
    """The harness's outputs on input codes ``P``: logits, counters, final state, class."""
    B, L, _ = P.shape
    nl, H, N2 = m.arrays["A_re"].shape
    C = m.arrays["dec_w"].shape[0]
    n_counters = m.n_counters
    d = exe.parent
    np.ascontiguousarray(P).tofile(d / "in.bin")
    r = subprocess.run([str(exe), "in.bin", "out.bin", str(B), str(L)], cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, f"harness exited {r.returncode}: {r.stderr}"
    widths = {"logits": C, "counts": n_counters, "x_re": nl * H * N2, "x_im": nl * H * N2, "cls": 1, "logits2": C}
    rec = np.fromfile(d / "out.bin", dtype=np.int64).reshape(B, sum(widths.values()))
    out, o = {}, 0
    for k, w in widths.items():
        out[k] = rec[:, o:o + w]
        o += w
    out["x_re"] = out["x_re"].reshape(B, nl, H, N2)
    out["x_im"] = out["x_im"].reshape(B, nl, H, N2)
    out["cls"] = out["cls"][:, 0]
    return out


def check_against_simulator(m, P: np.ndarray, c: dict):
    """The C harness's outputs ``c`` equal the simulator's for IntModel ``m`` on ``P``."""
    lg, cnt, _ = simulate(m, P)
    assert np.array_equal(c["logits"], lg), "C logits differ from the simulator's"
    assert np.array_equal(c["counts"], cnt), "C saturation counters differ from the simulator's"
    assert np.array_equal(c["counts"].sum(0), cnt.sum(0))
    assert np.array_equal(c["logits2"], lg), "intssm_classify logits differ"
    assert np.array_equal(c["cls"], lg.argmax(1)), "intssm_classify is not the first argmax"
    for b in range(len(P)):  # final state codes == the last step of the simulator's trace
        lg1, _, (tr, ti) = simulate(m, P[b:b + 1], trace=True)
        assert np.array_equal(lg1[0], lg[b])
        assert np.array_equal(c["x_re"][b], tr[-1]) and np.array_equal(c["x_im"][b], ti[-1]), f"final state of sequence {b}"


def random_case(m, qcfg, data, max_len: int, calib_scale: float = 1.0, seed: int = 0):
    """(quantized model, its IntModel, input codes) of a drawn length and input for model ``m``
    and config ``qcfg``; a configuration the datapath refuses is never run (the example is skipped)."""
    L = data.draw(st.integers(1, max_len))
    P = data.draw(inputs(m.cfg.d_input, L))
    calib = calib_scale * np.random.default_rng(seed).random((3, L, m.cfg.d_input))
    try:
        qm, _ = quantize(m, qcfg, torch.from_numpy(calib))
    except IntssmError as e:
        assert "2**53" in str(e) or "too large" in str(e)
        assume(False)
    return qm, from_quantized(qm), P
