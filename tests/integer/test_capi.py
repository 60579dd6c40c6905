"""The C export as a library: prefixed name spaces (two models in one C and one C++ program),
the streaming readout (bit-exact with the simulator's for every prefix length, both poolings),
a freestanding build that needs no libc, the state's size as compile-time constants, and the
generated README.

Needs gcc and g++ (``.ci/run`` installs them; these tests never skip in CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from intssm.integer import cdoc, cexport, mcu
from intssm.integer.export import from_quantized
from intssm.integer.sim import mean_rescale, simulate
from intssm.datapath.qspec import PRESETS
from intssm.training.model import ModelConfig, S4DModel

# tests/ is not a package: pytest puts it on sys.path
from c_helpers import CFLAGS, quantize

GCC, GXX, NM = shutil.which("gcc"), shutil.which("g++"), shutil.which("nm")
needs_cc = pytest.mark.skipif((GCC is None or GXX is None or NM is None) and not os.environ.get("CI"),
                              reason="gcc, g++ or nm not on PATH (CI installs them and never skips)")


def tiny(pool: str, L: int, d_in: int = 2, d_out: int = 3, seed: int = 0, qcfg: str = "w8a8"):
    """A small quantized model (2 layers) calibrated on random sequences of length ``L``."""
    m = S4DModel(ModelConfig(d_model=4, d_state=4, n_layers=2, d_input=d_in, d_output=d_out, pool=pool), seed=seed).double()
    calib = torch.from_numpy(np.random.default_rng(seed).random((4, L, d_in)))
    qm, _ = quantize(m, PRESETS[qcfg], calib)
    assert qm.dp.seq_len == L
    return qm


def run(cmd, cwd, **kw):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, **kw)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stderr[-4000:]!r}"
    return r


# ---------------------------------------------------------------------------- streaming readout ---

@given(st.integers(-(2**40), 2**40), st.integers(1, 5000), st.integers(1, 5000))
@settings(max_examples=300)
def test_mean_rescale_is_round_half_up(acc, steps, seq_len):
    """mean_rescale(acc, t, L) = round_half_up(acc L / t), exactly (Fractions), ties included."""
    want = Fraction(acc * seq_len, steps) + Fraction(1, 2)
    want = want.numerator // want.denominator
    assert mean_rescale(np.int64(acc), np.int64(steps), np.int64(seq_len)) == want
    assert mean_rescale(np.int64(acc), np.int64(seq_len), np.int64(seq_len)) == acc  # the identity at t = L


STREAM = r"""
/* stream IN OUT L T: one sequence of T steps in IN; after every step t the readout's class,
 * logits and counters to OUT as int64 records */
#include <stdio.h>
#include <stdlib.h>
#include "intssm_model.h"

static void put(FILE *f, int64_t v) { fwrite(&v, sizeof v, 1, f); }

int main(int argc, char **argv)
{
    static intssm_state s;
    int32_t lg[INTSSM_D_OUT];
    uint32_t cnt[INTSSM_N_COUNTERS];
    uint8_t p[INTSSM_D_IN];
    FILE *fi, *fo;
    int o, cls;
    if (argc != 3) return 2;
    fi = fopen(argv[1], "rb");
    fo = fopen(argv[2], "wb");
    if (!fi || !fo) return 3;
    intssm_reset(&s);
    while (fread(p, 1, sizeof p, fi) == sizeof p) {
        intssm_step(&s, p);
        cls = intssm_logits(&s, lg, cnt);
        put(fo, cls);
        for (o = 0; o < INTSSM_D_OUT; ++o) put(fo, lg[o]);
        for (o = 0; o < INTSSM_N_COUNTERS; ++o) put(fo, cnt[o]);
    }
    return fclose(fo) != 0;
}
"""


@needs_cc
@pytest.mark.parametrize("pool", ["mean", "last"])
def test_streaming_readout_equals_simulator(tmp_path, pool):
    """The readout after every step t = 1 .. L + 5 of a model quantized for L steps (mean pooling
    scaled to L, or the last step's output) gives the simulator's logits and counters for that
    prefix (``simulate(P[:, :t], pool_len=L)``, fast and reference kernels), and its class."""
    L, T = 7, 12
    qm = tiny(pool, L, seed=3)
    a, n = from_quantized(qm), len(qm.counters)
    cexport.write_c(a, tmp_path)
    (tmp_path / "stream.c").write_text(STREAM)
    run([GCC, *CFLAGS, "stream.c", "intssm_model.c", "-o", "stream"], tmp_path)
    P = np.random.default_rng(1).integers(0, 256, (1, T, 2)).astype(np.uint8)
    P[0, 3] = 255  # a saturating step
    P.tofile(tmp_path / "in.bin")
    run([str(tmp_path / "stream"), "in.bin", "out.bin"], tmp_path)
    rec = np.fromfile(tmp_path / "out.bin", np.int64).reshape(T, 1 + 3 + n)
    for t in range(1, T + 1):
        lg, cnt, _ = simulate(a, P[:, :t], pool_len=L)
        lr, cr, _ = simulate(a, P[:, :t], pool_len=L, reference=True)
        assert np.array_equal(lg, lr) and np.array_equal(cnt, cr)
        assert np.array_equal(rec[t - 1, 1:4], lg[0]), t
        assert np.array_equal(rec[t - 1, 4:], cnt[0]), t
        assert rec[t - 1, 0] == lg[0].argmax()
    # at t = L the streaming readout is the plain one
    lg, cnt, _ = simulate(a, P[:, :L])
    assert np.array_equal(rec[L - 1, 1:4], lg[0]) and np.array_equal(rec[L - 1, 4:], cnt[0])
    if pool == "mean":  # and elsewhere it is not the unscaled sum: scaling matters
        lg_unscaled, _, _ = simulate(a, P[:, :3], pool_len=3)
        assert not np.array_equal(simulate(a, P[:, :3], pool_len=L)[0], lg_unscaled)


def test_pool_len_refusals():
    """simulate refuses a mean-pooling readout over a prefix shorter than the full length, and a
    pool_len that is not a positive integer within range (0, -1, a bool, 2.5, 2**30)."""
    qm = tiny("mean", 5)
    a = from_quantized(qm)
    P = np.zeros((1, 3, 2), np.uint8)
    from intssm.errors import IntssmError

    with pytest.raises(IntssmError, match="full length"):
        simulate(a, P, lengths=np.array([2]))
    for bad in (0, -1, True, 2.5, 2**30):
        with pytest.raises(IntssmError, match="pool_len"):
            simulate(a, P, pool_len=bad)


# ---------------------------------------------------------------------- two models, C and C++ ---

TWO = r"""
/* two models in one program: IN holds T steps for kws (KWS_D_IN bytes each) then T steps for gest */
#include <stdio.h>
#include "kws_model.h"
#include "gest_model.h"

int main(int argc, char **argv)
{
    static kws_state a;
    static gest_state b;
    uint8_t pa[KWS_D_IN], pb[GEST_D_IN];
    int32_t la[KWS_D_OUT], lb[GEST_D_OUT];
    unsigned long t, T;
    int o, ca, cb;
    FILE *f;
    if (argc != 3 || sscanf(argv[2], "%lu", &T) != 1 || !(f = fopen(argv[1], "rb"))) return 2;
    kws_reset(&a);
    gest_reset(&b);
    for (t = 0; t < T; ++t) {
        if (fread(pa, 1, sizeof pa, f) != sizeof pa) return 3;
        kws_step(&a, pa);
    }
    for (t = 0; t < T; ++t) {
        if (fread(pb, 1, sizeof pb, f) != sizeof pb) return 3;
        gest_step(&b, pb);
    }
    ca = kws_logits(&a, la, NULL);
    cb = gest_logits(&b, lb, NULL);
    printf("%d", ca);
    for (o = 0; o < KWS_D_OUT; ++o) printf(" %ld", (long)la[o]);
    printf("\n%d", cb);
    for (o = 0; o < GEST_D_OUT; ++o) printf(" %ld", (long)lb[o]);
    printf("\n%lu %lu\n", (unsigned long)sizeof(kws_state), (unsigned long)sizeof(gest_state));
    return 0;
}
"""


@needs_cc
def test_two_prefixed_models_in_one_c_and_one_cpp_program(tmp_path):
    """Two models exported with --prefix kws and gest (different shapes and poolings) compile to
    objects whose every external symbol carries their prefix, and link into one C and one C++
    program (the header's extern "C"), each model giving the simulator's logits."""
    T = 6
    qa, qb = tiny("mean", T, d_in=2, d_out=3, seed=1), tiny("last", 9, d_in=3, d_out=4, seed=2)
    aa, ab = from_quantized(qa), from_quantized(qb)
    cexport.write_c(aa, tmp_path / "kws", prefix="kws")
    cexport.write_c(ab, tmp_path / "gest", prefix="gest")
    for ns in ("kws", "gest"):
        run([GCC, *CFLAGS, "-c", f"{ns}/{ns}_model.c", "-o", f"{ns}.o"], tmp_path)
        syms = run([NM, "-g", "--defined-only", f"{ns}.o"], tmp_path, text=True).stdout.split()[2::3]
        assert syms and all(s.startswith(f"{ns}_") for s in syms), syms
        hdr = (tmp_path / ns / f"{ns}_model.h").read_text()
        import re

        names = set(re.findall(r"#define (\w+)", hdr)) | set(re.findall(r"\b(\w+)\(", hdr.split("*/", 1)[1]))
        names -= {"defined", "sizeof"}
        assert names and all(n.startswith((f"{ns}_", f"{ns.upper()}_")) for n in names), names
    (tmp_path / "two.c").write_text(TWO)
    (tmp_path / "two.cpp").write_text(TWO.replace("#include <stdio.h>", "#include <cstdio>"))
    inc = ["-Ikws", "-Igest"]
    run([GCC, *CFLAGS, *inc, "two.c", "kws.o", "gest.o", "-o", "two_c"], tmp_path)
    run([GXX, "-O2", "-Wall", "-Wextra", "-Werror", *inc, "two.cpp", "kws.o", "gest.o", "-o", "two_cpp"], tmp_path)
    rng = np.random.default_rng(4)
    Pa, Pb = rng.integers(0, 256, (1, T, 2)).astype(np.uint8), rng.integers(0, 256, (1, T, 3)).astype(np.uint8)
    (tmp_path / "in.bin").write_bytes(Pa.tobytes() + Pb.tobytes())
    la, _, _ = simulate(aa, Pa)
    lb, _, _ = simulate(ab, Pb)
    want = [f"{la[0].argmax()} " + " ".join(map(str, la[0])), f"{lb[0].argmax()} " + " ".join(map(str, lb[0]))]
    for exe in ("two_c", "two_cpp"):
        out = run([str(tmp_path / exe), "in.bin", str(T)], tmp_path, text=True).stdout.splitlines()
        assert out[:2] == want, exe
        sizes = [cexport.c_storage(aa)["c_ram_bytes"], cexport.c_storage(ab)["c_ram_bytes"]]
        assert out[2] == f"{sizes[0]} {sizes[1]}"


# ------------------------------------------------------------------------- no libc, no warnings ---

ENTRY = r"""
/* a freestanding program: no libc, no start files; the model on a sequence in a static buffer */
#include "intssm_model.h"
static intssm_state s;
static uint8_t seq[5 * INTSSM_D_IN];
static int32_t lg[INTSSM_D_OUT];
int run_model(void) { return intssm_classify(&s, seq, 5, lg); }
"""


@needs_cc
@pytest.mark.parametrize("qcfg,state_layout", [("w8a8", "packed"), ("w16a16", "packed"), ("hetero-3b-x8-dither", "packed"),
                                                ("w8a8", "folded")])
def test_freestanding_build_needs_no_libc(tmp_path, qcfg, state_layout):
    """The export (and its folded layout) compiles with -ffreestanding and the strict warnings as
    errors, references no symbol it does not define (nm -u: no memset, no memcpy), and links with
    -nostdlib into a shared object that may not leave any symbol undefined."""
    qm = tiny("mean", 5, qcfg=qcfg)
    cexport.write_c(from_quantized(qm), tmp_path, state_layout)
    assert ("x_fold" in (tmp_path / "intssm_model.c").read_text()) == (state_layout == "folded")
    (tmp_path / "entry.c").write_text(ENTRY)
    flags = [*CFLAGS, "-ffreestanding", "-fPIC"]
    run([GCC, *flags, "-c", "intssm_model.c", "-o", "m.o"], tmp_path)
    assert run([NM, "-u", "m.o"], tmp_path, text=True).stdout.strip() == ""
    run([GCC, *flags, "-nostdlib", "-shared", "-Wl,--no-undefined", "entry.c", "m.o", "-o", "libm.so"], tmp_path)


def test_readme_states_the_measured_build(tmp_path):
    """The generated README gives the prefix's names and the exact flags the emulator's builds use."""
    qm = tiny("last", 5)
    cexport.write_c(from_quantized(qm), tmp_path, prefix="gest")
    text = (tmp_path / cdoc.README).read_text()
    cf, lf = mcu.build_flags("cortex-m4")
    assert " ".join(cf) in text and " ".join(lf) in text
    assert "gest_reset(&s)" in text and "GEST_STATE_BYTES" in text and "intssm_" not in text.replace("intssm_model", "")
    assert "-ffreestanding" in cf and "-nostdlib" in lf
