"""intssm.integer.cexport: the generated C99 model is bit-exact with the Numba simulator.

Every test that compiles uses ``gcc -std=c99 -Wall -Wextra -Werror -O2`` (skipped without gcc):
random small models and quantization configs (Hypothesis, a few examples: each compiles C), the
paper-small model on real sMNIST test sequences (logits, saturation counters, final state, and the
example ``main.c``), and the object's section sizes (tables take the bytes they claim, no ``.bss``).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from intssm.integer import cexport
from intssm import data
from intssm.errors import IntssmError
from intssm.integer.export import from_quantized, integer_model
from intssm.training.model import PRESETS as MODEL_PRESETS
from intssm.training.model import ModelConfig, S4DModel
from intssm.datapath.qspec import PRESETS, QFormat, QuantConfig
from intssm.integer.sim import simulate

# tests/ is not a package: pytest puts it on sys.path (rootdir-relative, "prepend" import mode)
from c_helpers import (GCC, SIZE, UBSAN, build_harness, check_against_simulator, gcc, needs_gcc,
                       quantize, random_case, run_c, usable_layout)
from strategies import models, quant_configs
from cli_helpers import assert_clean_error, intssm

@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ (a) random models / configs ---

@pytest.mark.slow
@needs_gcc
@settings(max_examples=8)
@given(models(), quant_configs(), st.data())
def test_c_equals_simulator_random_models(m, qcfg, data):
    """The generated C (host build, a drawn state layout) equals the simulator on random models,
    configs and inputs: logits, every saturation counter, classify's class and logits, and
    the final state, with ==."""
    qm, arrays, P = random_case(m, qcfg, data, 12, data.draw(st.sampled_from([0.3, 1.0])))
    layout_ = usable_layout(arrays, data.draw(st.sampled_from(cexport.STATE_LAYOUTS)))
    with tempfile.TemporaryDirectory() as t:
        c = run_c(build_harness(arrays, Path(t), state_layout=layout_), P, arrays)
    check_against_simulator(arrays, P, c)


@needs_gcc
def test_ubsan_catches_signed_overflow(tmp_path):
    """The sanitizer build used below really stops on a signed overflow (so its passing runs mean something)."""
    (tmp_path / "ub.c").write_text("#include <stdint.h>\nint main(int c, char **v) { (void)v; int64_t x = INT64_MAX - 1 + c;"
                                   " volatile int64_t y = x + 1; return y > 0 ? 0 : 3; }\n")
    gcc("ub.c", "-o", "ub", cwd=tmp_path, extra=UBSAN)
    r = subprocess.run([str(tmp_path / "ub")], capture_output=True, text=True)
    assert r.returncode != 0 and "signed integer overflow" in r.stderr


@needs_gcc
@settings(max_examples=6)
@given(models(), quant_configs(), st.data())
def test_c_under_ubsan_random_models(m, qcfg, data):
    """The export compiled with -fsanitize=undefined (a drawn state layout): no undefined behaviour on
    random valid models and inputs (including all-255 and all-0 runs), and still the simulator's integers."""
    qm, arrays, P = random_case(m, qcfg, data, 10, seed=1)
    layout_ = usable_layout(arrays, data.draw(st.sampled_from(cexport.STATE_LAYOUTS)))
    with tempfile.TemporaryDirectory() as t:
        c = run_c(build_harness(arrays, Path(t), extra=UBSAN, state_layout=layout_), P, arrays)
    check_against_simulator(arrays, P, c)


@needs_gcc
def test_c_wide_and_unsigned_codes(tmp_path):
    """16-bit asymmetric state (uint16_t codes), 16-bit everything else, last-step pooling, saturation."""
    q16, a16 = QFormat(16), QFormat(16, symmetric=False)
    qcfg = QuantConfig(enc_w=QFormat(16, False, True), A_re=q16, A_im=QFormat(16, True, True), B=a16, C=q16, D=q16,
                       mix_w=a16, dec_w=QFormat(16, False, True), h=q16, x_re=a16, x_im=QFormat(16, True, True),
                       y=QFormat(12), act=QFormat(12, False), glu=QFormat(10), sig=QFormat(10, False), pool=q16,
                       logits=a16, state_clip=0.5)
    m = S4DModel(ModelConfig(d_model=3, d_state=6, n_layers=2, d_input=2, d_output=4, pool="last"), seed=1).double()
    rng = np.random.default_rng(3)
    qm, _ = quantize(m, qcfg, torch.from_numpy(0.2 * rng.random((3, 9, 2))))
    arrays = from_quantized(qm)
    P = rng.integers(0, 256, (3, 9, 2)).astype(np.uint8)
    exe = build_harness(arrays, tmp_path)
    src = (tmp_path / "intssm_model.h").read_text()
    assert "#define INTSSM_X_BITS 32 " in src and "(16 + 16 bits" in src  # unsigned and signed 16-bit codes
    assert "int64" in src  # 16-bit formats need 64-bit accumulators somewhere
    c = run_c(exe, P, arrays)
    check_against_simulator(arrays, P, c)
    assert c["counts"].sum() > 0, "the test should exercise saturation"


# -------------------------------------------------------------------------- (b) real sMNIST ---

@pytest.fixture(scope="module")
def smnist_build(tmp_path_factory):
    """paper-small (seed 0, untrained) with w8a8 PTQ on 16 training sequences, compiled."""
    if GCC is None:
        pytest.skip("gcc not on PATH")
    model = S4DModel(MODEL_PRESETS["paper-small"], seed=0)
    calib = torch.from_numpy(data.load("smnist", "train", 16).as_float())
    qm, _ = quantize(model.double(), PRESETS["w8a8"], calib)
    arrays = from_quantized(qm)
    d = tmp_path_factory.mktemp("cexport_smnist")
    exe = build_harness(arrays, d)
    return qm, arrays, d, exe


@needs_gcc
def test_c_equals_simulator_smnist(smnist_build):
    """The paper-small export on 20 real sMNIST test sequences equals the simulator (logits,
    counters, final state), and the example main.c prints the same logits, class and step
    count for one sequence read from stdin."""
    qm, arrays, d, exe = smnist_build
    P = data.load("smnist", "test", 20).x
    assert P.dtype == np.uint8 and P.shape == (20, 784, 1)
    c = run_c(exe, P, arrays)
    check_against_simulator(arrays, P, c)
    # the example program: one sequence on stdin -> the same logits and class
    gcc("main.c", "intssm_model.c", "-o", "demo", cwd=d)
    r = subprocess.run([str(d / "demo")], input=P[3].tobytes(), capture_output=True, cwd=d)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "logits: " + " ".join(str(v) for v in c["logits"][3])
    assert lines[1] == f"class: {c['cls'][3]}"
    assert lines[2] == "steps: 784"
    # any length: 100 steps give the streaming readout of those steps (mean pooling scaled to 784)
    r = subprocess.run([str(d / "demo")], input=P[3].tobytes()[:100], capture_output=True, cwd=d)
    lg, _, _ = simulate(arrays, P[3:4, :100], pool_len=784)
    assert r.returncode == 0 and r.stdout.decode().splitlines() == [
        "logits: " + " ".join(str(v) for v in lg[0]), f"class: {lg[0].argmax()}", "steps: 100"]
    r = subprocess.run([str(d / "demo")], input=b"", capture_output=True, cwd=d)
    assert r.returncode == 2 and b"error: 0 steps" in r.stderr


# ----------------------------------------------------------------------- (c) section sizes ---

def sections(obj: Path) -> dict:
    r = subprocess.run([SIZE, "-A", str(obj)], capture_output=True, text=True, check=True)
    out = {}
    for line in r.stdout.splitlines():
        m = re.match(r"^(\.\S+)\s+(\d+)\s+\d+", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


@needs_gcc
@pytest.mark.skipif(SIZE is None, reason="binutils size not on PATH")
def test_object_sections_match_tables(smnist_build):
    """The compiled object holds the constants in .rodata/.data with exactly the table bytes the
    storage plan accounts (packed blob = the fields' bits), and nothing in .bss."""
    qm, arrays, d, _ = smnist_build
    gcc("-c", "intssm_model.c", "-o", "intssm_model.o", cwd=d)
    sec = sections(d / "intssm_model.o")
    qcfg = qm.dp.qcfg
    layout = cexport.table_layout(arrays.arrays, qcfg)
    p = cexport.plan(arrays.arrays, qcfg)
    tables = p.flash_bytes
    assert tables == cexport.rodata_bytes_estimate(arrays.arrays, qcfg)
    # packed fields: the blob is the tables' exact bits; native tables whole C integers
    assert p.blob_bytes == sum(-(-n * int(w.split(":")[1]) // 8) for w, n, _ in layout.values() if w.startswith("bits:"))
    ro = sum(v for k, v in sec.items() if k.startswith(".rodata") or k.startswith(".data"))
    bss = sum(v for k, v in sec.items() if k.startswith(".bss"))
    print(f"\npaper-small w8a8: {len(layout)} tables, {tables} table bytes; .rodata+.data = {ro} "
          f"(padding {ro - tables}); .bss = {bss}; .text = {sec.get('.text')}")
    assert bss == 0, "the model must hold no mutable globals"
    assert sum(v for k, v in sec.items() if k.startswith(".data")) == 0
    assert tables <= ro <= tables + 64 * len(layout)
    # w8a8: the 8-bit weight codes take one byte each, biases whole words; 15-bit multipliers and
    # 6-bit shifts are packed; zero points of symmetric formats take no bytes
    for k in ("A_re", "A_im", "B_re", "C_re", "mix_w", "dec_w"):
        assert layout[k][0] == "int8_t"
    assert layout["enc_b"][0] == {16: "int16_t", 32: "int32_t"}[qcfg.bias_bits] and layout["enc_M"][0] == "bits:15" and layout["enc_S"][0] == "bits:6"
    assert layout["A_re_z"] == ("folded", layout["A_re_z"][1], 0)


# ------------------------------------------------------------------------ generator checks ---

PRIMITIVE = r"""
/* the rounding shifts of the generated model (static: included) on int64 triples (v, s, which)
 * from stdin: which 0 = rq32, 1 = rq64, 2 = rq64w, 3 = rq64x, each with the half-up offset 2^(s-1) */
#include <stdio.h>
#include "intssm_model.c"

int main(void)
{
    int64_t vs[3];
    while (fread(vs, sizeof vs[0], 3, stdin) == 3) {
        const int s = (int)vs[1];
        const int64_t half = s ? (int64_t)1 << (s - 1) : 0;
        int64_t r = vs[2] == 0 ? rq32((int32_t)vs[0], (int32_t)half, s)
                  : vs[2] == 1 ? rq64(vs[0], half, s) : vs[2] == 2 ? rq64w(vs[0], half, s) : rq64x(vs[0], half, s);
        fwrite(&r, sizeof r, 1, stdout);
    }
    return 0;
}
"""


@needs_gcc
@pytest.mark.parametrize("portable", [False, True])
def test_c_rounding_shifts_are_floor_half_up(tmp_path, portable):
    """Ties, negatives, s = 0 and large shifts: each C rounding shift is floor((v + 2^(s-1)) / 2^s), as
    in Python, with GCC's arithmetic shifts and with the portable unsigned ones, over the domain each
    one is used on (rq32: 32-bit v + d, s <= 31; rq64: s <= 31; rq64w: s <= 62; results in int32;
    rq64x: any |v| < 2^53)."""
    from intssm.datapath.fixedpoint import rounding_rshift

    cexport.write_c(from_quantized(_tiny()), tmp_path)
    (tmp_path / "prim.c").write_text(PRIMITIVE)
    gcc("prim.c", "-o", "prim", cwd=tmp_path, extra=["-DINTSSM_PORTABLE_SHIFTS"] if portable else [])
    rng = np.random.default_rng(0)
    triples = []
    for s in range(0, 47):
        half = (1 << (s - 1)) if s else 0
        cands = []
        for k in (-3, -2, -1, 0, 1, 2, 3, 1000, -1000, 2**30 - 1, -(2**30)):  # exact ties and their neighbours
            for d in (-1, 0, 1):
                cands += [k * (1 << s) + half + d, k * (1 << s) - half + d]
        cands += [int(v) for v in rng.integers(-(2**52), 2**52, 20)] + [int(v) for v in rng.integers(-(2**31), 2**31, 20)]
        for v in cands:
            r = (v + half) >> s
            if abs(v) >= 2**53:
                continue
            triples.append((v, s, 3))
            if not -(2**31) <= r < 2**31:
                continue
            if s <= 31 and -(2**31) <= v + half < 2**31 and -(2**31) <= v < 2**31:
                triples.append((v, s, 0))
            if s <= 31:
                triples.append((v, s, 1))
            triples.append((v, s, 2))
    arr = np.array(triples, dtype=np.int64)
    assert {0, 1, 2, 3} <= set(arr[:, 2].tolist()) and len(arr) > 2000
    r = subprocess.run([str(tmp_path / "prim")], input=arr.tobytes(), capture_output=True, cwd=tmp_path)
    assert r.returncode == 0
    got = np.frombuffer(r.stdout, dtype=np.int64)
    want = np.array([(v + ((1 << (s - 1)) if s else 0)) >> s for v, s, _ in triples], dtype=np.int64)
    assert np.array_equal(got, want)
    assert all(rounding_rshift(np.int64(v), np.int64(s)) == w for (v, s, _), w in zip(triples[:400], want[:400]))


def test_ctype_choice_and_literals():
    """ctype_for picks the narrowest C integer type holding a range, and C literals at the
    int32/int64 edges are written without overflow (INT32_MIN as an expression, wide values
    with INT64_C)."""
    assert cexport.ctype_for(-128, 127) == ("int8_t", 1)
    assert cexport.ctype_for(0, 255) == ("uint8_t", 1)
    assert cexport.ctype_for(-1, 255) == ("int16_t", 2)
    assert cexport.ctype_for(0, 65535) == ("uint16_t", 2)
    assert cexport.ctype_for(-(2**31), 2**31 - 1) == ("int32_t", 4)
    assert cexport.ctype_for(-1, 2**31) == ("int64_t", 8)
    assert cexport.c_int(-(2**31)) == "(-2147483647 - 1)" and cexport.c_int(2**40) == "INT64_C(1099511627776)"


def test_c_dither_formulas_come_from_fixedpoint():
    """The C dither lane (cstep.c_lane, built by applying fixedpoint.weyl_lane_of to C operands),
    evaluated with integers, equals weyl_lane_of for both parts and unrolled modes; the C Weyl
    constants are fixedpoint's."""
    from intssm.datapath.fixedpoint import WEYL_LANE, WEYL_STEP, weyl_lane_of
    from intssm.integer import cstep, ctext

    for part in (0, 1):
        for n, dn in (("n", 0), ("n + 3", 3)):
            expr = cstep.c_lane("NS", part, n)
            for i, H, hh, N2, nv in ((0, 1, 0, 1, 0), (2, 5, 3, 7, 4), (1, 16, 15, 32, 28)):
                got = eval(expr, {}, {"i": i, "NS_H": H, "hh": hh, "NS_N2": N2, "n": nv})
                assert got == weyl_lane_of(i, part, H, hh, N2, nv + dn)
    assert f"UINT32_C(0x{WEYL_LANE:08X})" in cstep.HELPERS and ctext.c_hex32(WEYL_STEP) == "0x9E3779B9"


def _tiny():
    m = S4DModel(ModelConfig(d_model=2, d_state=2, n_layers=1), seed=0).double()
    qm, _ = quantize(m, PRESETS["w8a8"], torch.rand(2, 5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    return qm


def test_write_c_takes_only_a_validated_model(tmp_path):
    """write_c takes an IntModel, never loose arrays (a dict is a TypeError: models are validated
    at the one door, layout.validate, which refuses arrays that disagree with the description --
    a shape, a missing array -- naming it); an output path that is a file is an IntssmError."""
    from dataclasses import replace

    qm = _tiny()
    raw = integer_model(qm)
    with pytest.raises(TypeError, match="IntModel"):
        cexport.write_c(raw, tmp_path)
    with pytest.raises(IntssmError, match="shape"):
        cexport.layout.validate(raw, replace(qm.dp.cfg, d_model=3), qm.dp.qcfg, qm.dp.seq_len)
    with pytest.raises(IntssmError, match="missing arrays"):
        cexport.layout.validate({k: v for k, v in raw.items() if k != "sig_lut"}, qm.dp.cfg, qm.dp.qcfg, qm.dp.seq_len)
    (tmp_path / "f").write_text("")
    with pytest.raises(IntssmError, match="not a directory"):
        cexport.write_c(from_quantized(qm), tmp_path / "f")


def test_cli_export_c(tmp_path):
    """The export-c command: .npz in, C files and JSON out."""
    from typer.testing import CliRunner

    from intssm.integer import export
    from intssm.cli import app

    qm = _tiny()
    npz = tmp_path / "m.npz"
    export.save(npz, qm)
    r = CliRunner().invoke(app, ["export-c", str(npz), "-o", str(tmp_path / "c"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert [Path(f).name for f in res["files"]] == ["intssm_model.h", "intssm_model.c", "main.c", "README.md"]
    assert all(Path(f).is_file() for f in res["files"])
    assert res["rodata_bytes_estimate"] == cexport.rodata_bytes_estimate(integer_model(qm), qm.dp.qcfg)
    r = CliRunner().invoke(app, ["export-c", str(npz), "-o", str(tmp_path / "c2")])
    assert r.exit_code == 0 and "intssm_model.c" in r.stdout
    r = CliRunner().invoke(app, ["export-c", str(npz), "-o", str(tmp_path / "c3"), "--prefix", "kws"])
    assert r.exit_code == 0 and "kws_model.c" in r.stdout and (tmp_path / "c3" / "kws_model.h").is_file()
    for bad in ("Kws", "1a", "a-b", "kws_", "x" * 25, ""):
        with pytest.raises(IntssmError, match="--prefix"):
            cexport.check_prefix(bad)
    assert_clean_error(intssm("export-c", npz, "-o", tmp_path / "c4", "--prefix", "a-b"), "--prefix")
    assert not (tmp_path / "c4").exists()


SIZEOF = r"""
#include <stdio.h>
#include "intssm_model.h"
int main(void) { printf("%zu\n", sizeof(intssm_state)); return 0; }
"""


@needs_gcc
@pytest.mark.skipif(SIZE is None, reason="binutils size not on PATH")
def test_memory_map_matches_compiled_object(smnist_build):
    """`intssm memory`'s C storage figures agree with the compiler: flash = .rodata within alignment
    padding, RAM = sizeof(intssm_state) exactly, and .data + .bss are empty."""
    qm, arrays, d, _ = smnist_build
    cs = cexport.c_storage(arrays)
    gcc("-c", "intssm_model.c", "-o", "intssm_model.o", cwd=d)
    sec = sections(d / "intssm_model.o")
    ro = sum(v for k, v in sec.items() if k.startswith(".rodata"))
    assert cs["c_flash_bytes"] <= ro <= cs["c_flash_bytes"] + 8 * len(cexport.table_layout(arrays.arrays, qm.dp.qcfg))
    assert sum(v for k, v in sec.items() if k.startswith((".data", ".bss"))) == 0
    (d / "sizeof.c").write_text(SIZEOF)
    gcc("sizeof.c", "-o", "sizeof", cwd=d)
    out = subprocess.run([str(d / "sizeof")], capture_output=True, text=True, check=True).stdout
    assert int(out) == cs["c_ram_bytes"]


@needs_gcc
def test_c_shifts_past_31_take_the_64bit_path(tmp_path):
    """A site with shifts past 31 (here pooling, S = 40, M = 1): its bound, which includes the rounding
    offset 2^(S-1), puts it on the 64-bit path with the wide rounding shift; the simulator's integers
    under UBSan and with the portable shifts too."""
    qm = _tiny()
    raw = integer_model(qm)
    raw["pool_M"], raw["pool_S"] = np.ones_like(raw["pool_M"]), np.full_like(raw["pool_S"], 40)
    a = cexport.layout.validate(raw, qm.dp.cfg, qm.dp.qcfg, qm.dp.seq_len)
    w = cexport.site_widths(a)
    assert w["pool"].acc64 and w["pool"].wide_shift
    P = np.random.default_rng(0).integers(0, 256, (3, 5, 1)).astype(np.uint8)
    for extra in ([], ["-DINTSSM_PORTABLE_SHIFTS"], UBSAN):
        c = run_c(build_harness(a, tmp_path, extra=extra), P, a)
        check_against_simulator(a, P, c)


# ------------------------------------------------------------------- (d) the folded layout ---

CKPT = Path(__file__).resolve().parents[2] / "data" / "checkpoints"


def _shipped(name: str):
    """The IntModel of a shipped checkpoint."""
    from intssm import sources

    return sources.load(CKPT / name).model


@needs_gcc
@pytest.mark.parametrize("name,extra", [("paper-small-hetero.pt", []), ("paper-small-hetero-shared.pt", ["-DINTSSM_PORTABLE_SHIFTS"]),
                                        ("paper-small-hetero.pt", UBSAN)])
def test_folded_layout_equals_simulator(tmp_path, name, extra):
    """The shipped models in the folded layout (the host has no DSP extension: the portable C of
    every intrinsic), with GCC's and the portable shifts and under UBSan: 12 real sMNIST sequences
    give the simulator's logits, counters and final state; the per-mode words are 28 bytes, 20 with
    shared complex scales."""
    m = _shipped(name)
    exe = build_harness(m, tmp_path, extra=extra, state_layout="folded")
    src = (tmp_path / "intssm_model.c").read_text()
    shared = "shared" in name  # complex_scale shared: K3 = K0 and K4 = -K1, 5 words per mode instead of 7
    assert f"x_fold[{(5 if shared else 7) * 512}]" in src and "x_mix[128]" in src and "T = 17" in src and "__smlabb" in src
    P = data.load("smnist", "test", 12).x
    check_against_simulator(m, P, run_c(exe, P, m))
    st_ = cexport.c_storage(m, "folded")
    assert st_["c_flash_bytes"] - cexport.c_storage(m, "halves")["c_flash_bytes"] >= (5 if shared else 7) * 4 * 512 - 3088
    assert st_["c_ram_bytes"] == cexport.c_storage(m, "halves")["c_ram_bytes"]
    assert st_["c_flash_bytes"] == cexport.rodata_bytes_estimate(m.arrays, m.qcfg, "folded")


@needs_gcc
def test_folded_layout_per_channel_shifts_and_refusals(tmp_path):
    """Where no one shift T keeps every scaled accumulator below 2^31 (a channel's shift cut to 1),
    the folded layout shifts each channel by its own S, still the simulator's integers (with
    saturation); a dithered model and nonzero state zero points are refused with a reason."""
    import dataclasses

    from intssm.integer import cstorage

    m0 = _shipped("paper-small-hetero.pt")
    raw = {k: np.array(v) for k, v in m0.arrays.items()}
    raw["x_re_S"][0, 3] = 1
    m = cexport.layout.validate(raw, m0.cfg, m0.qcfg, m0.seq_len, m0.input)
    assert cstorage.fold(m.arrays, m.qcfg).T is None
    exe = build_harness(m, tmp_path, state_layout="folded")
    assert "T = " not in (tmp_path / "intssm_model.c").read_text()
    P = data.load("smnist", "test", 3).x
    c = run_c(exe, P, m)
    check_against_simulator(m, P, c)
    assert c["counts"][:, 1].min() > 0, "the cut shift should saturate the state"
    with pytest.raises(IntssmError, match="dithers"):
        cstorage.fold(m.arrays, dataclasses.replace(m.qcfg, state_rounding="dither"))
    z = dict(m.arrays)
    z["x_re_z"] = m.arrays["x_re_z"] + 1
    with pytest.raises(IntssmError, match="zero point"):
        cstorage.fold(z, m.qcfg)


def test_cli_folded_layout_refuses_a_dithered_model(tmp_path):
    """export-c --state-layout folded on a model with the dithered state rounding: one error line
    naming the reason, exit 2, no file written."""
    from intssm.integer import export

    m = S4DModel(ModelConfig(d_model=4, d_state=4, n_layers=1), seed=0).double()
    qm, _ = quantize(m, PRESETS["hetero-3b-x8-dither"], torch.rand(2, 8, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    export.save(tmp_path / "m.npz", qm, quiet=True)
    assert_clean_error(intssm("export-c", tmp_path / "m.npz", "-o", tmp_path / "c", "--state-layout", "folded"), "dithers")
    assert not (tmp_path / "c" / "intssm_model.c").exists()
