"""intssm.integer.cinput: the C input path turns float32 readings into exactly the input codes of
the host's input quantizer -- at every threshold and its neighbours, at the special values, on
every value of the shipped float datasets, in Python and in compiled C, and through ``main.c``.

The C tests need gcc (``.ci/run`` installs it; they never skip in CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intssm import data, sources
from intssm.datapath.inputq import InputQuant
from intssm.integer import cexport, cinput
from intssm.integer.sim import simulate

from c_helpers import CFLAGS

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None and not os.environ.get("CI"), reason="gcc not on PATH (CI installs it and never skips)")
ROOT = Path(__file__).resolve().parents[2]
#: the host quantizer's round_half_up(+-inf) passes through inf - inf (the result is +-inf, exact)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")
SHIPPED = {"japanesevowels-hetero": "data/uea/JapaneseVowels", "basicmotions-hetero": "data/uea/BasicMotions"}


def special_values() -> np.ndarray:
    """Signed zeros, infinities, subnormals, the largest finite values, and 1 ulp around them."""
    f = np.finfo(np.float32)
    v = [0.0, -0.0, np.inf, -np.inf, f.max, -f.max, f.tiny, -f.tiny, f.smallest_subnormal, -f.smallest_subnormal,
         1.0, -1.0, 0.5, -0.5]
    k = cinput.order_key(np.array(v, np.float32)).astype(np.int64)
    k = np.clip(np.concatenate([k - 1, k, k + 1]), cinput.KEY_NEG_INF, cinput.KEY_POS_INF)
    return cinput.from_key(k.astype(np.uint32))


def probes(iq: InputQuant, thr: np.ndarray) -> np.ndarray:
    """(n, d) float32: every channel's thresholds and 1 and 2 ulps (order keys) either side of
    each, plus the special values and the neighbourhoods of lo and lo + qmax s."""
    cols = []
    for j in range(thr.shape[0]):
        k = thr[j].astype(np.int64)
        k = np.concatenate([k + o for o in (-2, -1, 0, 1, 2)])
        c = cinput.from_key(np.clip(k, cinput.KEY_NEG_INF, cinput.KEY_POS_INF).astype(np.uint32))
        ends = np.array([iq.lo[j], iq.lo[j] + iq.qmax * iq.scale[j]], np.float32)
        ek = cinput.order_key(ends).astype(np.int64)
        ends = cinput.from_key(np.concatenate([ek + o for o in range(-3, 4)]).astype(np.uint32))
        cols.append(np.concatenate([c, special_values(), ends]))
    n = max(len(c) for c in cols)
    return np.stack([np.resize(c, n) for c in cols], axis=1)


def test_order_key_is_the_float_order():
    """key(a) < key(b) exactly when a < b on non-NaN float32 (-0 and +0 equal), and from_key inverts it."""
    v = np.sort(np.concatenate([special_values(), np.random.default_rng(0).standard_normal(2000).astype(np.float32) * 1e3]))
    k = cinput.order_key(v)
    def order(a):
        return (a[1:] > a[:-1]).astype(int) - (a[1:] < a[:-1])

    assert np.array_equal(order(k), order(v)) and order(v).any()
    nz = v != 0
    assert np.array_equal(cinput.from_key(k)[nz].view(np.uint32), v[nz].view(np.uint32))


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 8), st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(1e-6, 1e4)), min_size=1, max_size=3))
def test_thresholds_are_exact_for_random_quantizers(bits, chans):
    """For any quantizer: the code at each threshold is at least k + 1 and one ulp below it less,
    and the thresholds' count gives the host's code on every probe."""
    iq = InputQuant(np.array([c[0] for c in chans], np.float64), np.array([c[1] for c in chans], np.float64), bits)
    thr = cinput.thresholds(iq)
    assert thr.shape == (len(chans), iq.qmax) and (np.diff(thr.astype(np.int64), axis=1) >= 0).all()
    k = np.arange(1, iq.qmax + 1)[:, None]
    assert (iq.codes(cinput.from_key(thr).T[None])[0] >= k).all()
    assert (iq.codes(cinput.from_key(thr - 1).T[None])[0] < k).all()
    P = probes(iq, thr)
    assert np.array_equal(cinput.codes_from_thresholds(thr, P), iq.codes(P[None])[0])


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def shipped(request):
    im = sources.load(ROOT / "data" / "checkpoints" / f"{request.param}.pt")
    assert im.model.float_input
    x = np.concatenate([data.load(ROOT / SHIPPED[request.param], s).x.reshape(-1, im.model.input.lo.size) for s in ("train", "test")])
    assert x.dtype == np.float32
    return request.param, im, x


def test_thresholds_give_every_dataset_code(shipped):
    """Every value of the shipped float dataset (train and test, padding included) and every probe:
    the thresholds' count equals the host's code."""
    _, im, x = shipped
    thr = cinput.thresholds(im.model.input)
    for v in (x, probes(im.model.input, thr)):
        assert np.array_equal(cinput.codes_from_thresholds(thr, v), im.model.input.codes(v[None])[0])


CODES = r"""
/* codes IN OUT: float32 rows of INTSSM_D_IN readings in IN, their input codes to OUT */
#include <stdio.h>
#include "intssm_model.h"
int main(int argc, char **argv)
{
    float u[INTSSM_D_IN];
    uint8_t p[INTSSM_D_IN];
    FILE *fi, *fo;
    if (argc != 3 || !(fi = fopen(argv[1], "rb")) || !(fo = fopen(argv[2], "wb"))) return 2;
    while (fread(u, sizeof u[0], INTSSM_D_IN, fi) == INTSSM_D_IN) {
        intssm_input_codes(u, p);
        fwrite(p, 1, sizeof p, fo);
    }
    return fclose(fo) != 0;
}
"""


@needs_gcc
def test_c_input_path_gives_the_hosts_codes(shipped, tmp_path):
    """The compiled intssm_input_codes on every dataset value and every probe (thresholds, 1 and 2
    ulps around them, special values) gives the host quantizer's codes; main.c, fed raw float32
    readings of variable-length test sequences, gives the simulator's logits for their codes."""
    name, im, x = shipped
    cexport.write_c(im.model, tmp_path)
    assert "#define INTSSM_FLOAT_INPUT 1" in (tmp_path / "intssm_model.h").read_text()
    (tmp_path / "codes.c").write_text(CODES)
    for src, exe in (("codes.c", "codes"), ("main.c", "demo")):
        r = subprocess.run([GCC, *CFLAGS, src, "intssm_model.c", "-o", exe], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    v = np.concatenate([x, probes(im.model.input, cinput.thresholds(im.model.input))]).astype(np.float32)
    v.tofile(tmp_path / "in.bin")
    subprocess.run([str(tmp_path / "codes"), "in.bin", "out.bin"], cwd=tmp_path, check=True)
    got = np.fromfile(tmp_path / "out.bin", np.uint8).reshape(v.shape)
    assert np.array_equal(got, im.model.input.codes(v[None])[0])
    ds = data.load(ROOT / SHIPPED[name], "test", 6)
    P = im.input_codes(ds)
    for b in range(len(P)):
        n = int(ds.lengths[b])
        r = subprocess.run([str(tmp_path / "demo")], input=ds.x[b, :n].astype(np.float32).tobytes(), capture_output=True, cwd=tmp_path)
        lg, _, _ = simulate(im.model, P[b:b + 1, :n], pool_len=im.model.seq_len)
        assert r.returncode == 0 and r.stdout.decode().splitlines()[0] == "logits: " + " ".join(map(str, lg[0]))


ADC = r"""
/* adc OUT: the input codes of every int16 ADC code, the same code on every channel */
#include <stdio.h>
#include "intssm_model.h"
int main(int argc, char **argv)
{
    int16_t a[INTSSM_D_IN];
    uint8_t p[INTSSM_D_IN];
    long v;
    int j;
    FILE *fo;
    if (argc != 2 || !(fo = fopen(argv[1], "wb"))) return 2;
    for (v = -32768; v <= 32767; ++v) {
        for (j = 0; j < INTSSM_D_IN; ++j) a[j] = (int16_t)v;
        intssm_input_codes_adc(a, p);
        fwrite(p, 1, sizeof p, fo);
    }
    return fclose(fo) != 0;
}
"""


@needs_gcc
def test_c_adc_path_gives_the_hosts_codes_on_every_int16(shipped, tmp_path):
    """With --adc-scale, intssm_input_codes_adc on all 65,536 int16 codes of every channel gives the
    host quantizer's code of the float32 reading a * s_j; a model of uint8 data refuses the option."""
    _, im, x = shipped
    span = (x.max(0).astype(np.float64) - x.min(0)) / 30000.0  # readings of +-32768 codes cover the data's range
    s = span.astype(np.float32)
    cexport.write_c(im.model, tmp_path, adc_scale=s.tolist())
    assert "#define INTSSM_ADC_INPUT 1" in (tmp_path / "intssm_model.h").read_text()
    (tmp_path / "adc.c").write_text(ADC)
    r = subprocess.run([GCC, *CFLAGS, "adc.c", "intssm_model.c", "-o", "adc"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    subprocess.run([str(tmp_path / "adc"), "out.bin"], cwd=tmp_path, check=True)
    got = np.fromfile(tmp_path / "out.bin", np.uint8).reshape(65536, -1)
    want = im.model.input.codes(cinput.adc_readings(s)[None])[0]
    assert np.array_equal(got, want) and len(np.unique(want)) > im.model.input.qmax // 2  # most codes reached
    from intssm.errors import IntssmError

    with pytest.raises(IntssmError, match="ADC scale"):
        cexport.write_c(im.model, tmp_path / "bad", adc_scale=[0.1, -1.0] + [0.1] * (len(s) - 2))
    u8 = sources.load(ROOT / "data" / "checkpoints" / "paper-small-hetero.pt")
    with pytest.raises(IntssmError, match="adc-scale"):
        cexport.write_c(u8.model, tmp_path / "bad2", adc_scale=[0.1])
