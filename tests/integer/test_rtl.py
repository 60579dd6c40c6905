"""intssm.integer.rtl / cosim: the generated Verilog is bit-exact with the simulator.

* the fixed-point primitives under Icarus Verilog against :mod:`intssm.datapath.fixedpoint`, on
  edge values (+-2 around every power of two, exact ties, code-range ends) and random ones;
* the shipped default model on 200 sMNIST test sequences and JapaneseVowels on all 370, under
  Verilator (logits, saturation counters, final state with ``==``; the stated cycles per step);
* random small models and configurations (Hypothesis: dither, shared complex scales, asymmetric
  formats, any lane count) under Icarus Verilog;
* the harness catches a one-bit bug injected into the design and names where it is;
* one small design synthesized by Yosys for the iCE40 UP5K.

Tools: ``verilator``, ``iverilog``, ``yosys`` (Debian packages; ``.ci/run`` installs them). A test
that needs one skips without it, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intssm import data, sources
from intssm.datapath import fixedpoint as fx
from intssm.errors import IntssmError
from intssm.integer import cosim, rtl

# tests/ is not a package: pytest puts it on sys.path
from c_helpers import random_case
from strategies import models, quant_configs

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "data" / "checkpoints" / "paper-small-hetero.pt"
JV = ROOT / "data" / "checkpoints" / "japanesevowels-hetero.pt"


def needs(tool: str):
    """Skip without ``tool``, except in CI (``CI=true``), where a missing tool is a failure."""
    return pytest.mark.skipif(shutil.which(tool) is None and not os.environ.get("CI"), reason=f"{tool} not on PATH")


# ------------------------------------------------------------------------------ primitives ---

PRIM_TB = r"""
module prim_tb;
    reg [63:0] op, f1, f2, f3, f4, f5, f6;
    wire signed [53:0] r_rs, r_os, r_sat, r_rq;
    wire fl_sat, fl_rq;
    wire [32:0] r_w;
    intssm_rounding_rshift #(.W(54), .WS(7)) a (.v(f1[53:0]), .s(f2[6:0]), .r(r_rs));
    intssm_offset_rshift #(.W(54), .WS(7)) b (.v(f1[53:0]), .d(f2[53:0]), .s(f3[6:0]), .r(r_os));
    intssm_saturate #(.W(54)) c (.v(f1[53:0]), .lo(f2[53:0]), .hi(f3[53:0]), .r(r_sat), .flag(fl_sat));
    intssm_requantize #(.W(54), .WS(7)) d (.acc(f1[53:0]), .m(f2[14:0]), .s(f3[6:0]), .z(f4[53:0]), .lo(f5[53:0]),
                                           .hi(f6[53:0]), .code(r_rq), .flag(fl_rq));
    intssm_weyl_offset e (.phase(f1[31:0]), .lane_phase(f2[31:0]), .s(f3[6:0]), .d(r_w));
    integer fi, fo, n;
    initial begin
        fi = $fopen("vec.txt", "r");
        fo = $fopen("res.txt", "w");
        while (!$feof(fi)) begin
            n = $fscanf(fi, "%h %h %h %h %h %h %h\n", op, f1, f2, f3, f4, f5, f6);
            if (n == 7) begin
                #1;
                case (op)
                    0: $fdisplay(fo, "%0d 0", r_rs);
                    1: $fdisplay(fo, "%0d 0", r_os);
                    2: $fdisplay(fo, "%0d %0d", r_sat, fl_sat);
                    3: $fdisplay(fo, "%0d %0d", r_rq, fl_rq);
                    default: $fdisplay(fo, "%0d 0", r_w);
                endcase
            end
        end
        $fclose(fo);
        $finish;
    end
endmodule
"""


def _edges(limit: int) -> list:
    """+-2 around every power of two and its negative below ``limit``, and 0."""
    out = {0}
    for e in range(limit.bit_length()):
        for d in (-2, -1, 0, 1, 2):
            for v in ((1 << e) + d, -(1 << e) + d):
                if abs(v) < limit:
                    out.add(v)
    return sorted(out)


def _vectors(rng) -> list:
    """(op, fields, expected) for every primitive: edge values and random ones."""
    i64 = np.int64
    vec = []
    for s in range(0, 47):
        half = (1 << (s - 1)) if s else 0
        cands = set(v for v in _edges(2**52) if abs(v) + half < 2**53)
        for kk in (-3, -1, 0, 1, 2, 1000, -1000):  # exact ties and their neighbours
            for d in (-2, -1, 0, 1, 2):
                for v in (kk * (1 << s) + half + d, kk * (1 << s) - half + d):
                    if abs(v) + half < 2**53:
                        cands.add(v)
        cands |= {int(v) for v in rng.integers(-(2**52), 2**52, 8)}
        for v in sorted(cands):
            vec.append((0, [v, s], int(fx.rounding_rshift(i64(v), i64(s))), 0))
            d = int(rng.integers(0, 1 << s)) if s else 0
            for dd in {0, d, half, (1 << s) - 1 if s else 0}:
                if abs(v) + dd < 2**53:
                    vec.append((1, [v, dd, s], int(fx.offset_rshift(i64(v), i64(dd), i64(s))), 0))
    for lo, hi in ((-128, 127), (0, 255), (-32768, 32767), (0, 65535), (-2, 1), (5, 5)):
        for v in list(range(lo - 3, lo + 3)) + list(range(hi - 2, hi + 4)) + [0, 2**52, -(2**52)]:
            r, f = fx.saturate(i64(v), i64(lo), i64(hi))
            vec.append((2, [v, lo, hi], int(r), int(f)))
    for m in (0, 1, 2, 2**14 - 1, 2**14, 2**15 - 1):
        for s in (0, 1, 7, 15, 31, 46):
            for acc in _edges(2**37)[::3] + [int(v) for v in rng.integers(-(2**37), 2**37, 4)]:
                for z, lo, hi in ((0, -128, 127), (7, 0, 255), (-3, -32768, 32767)):
                    if abs(acc * m) + (1 << max(s - 1, 0)) < 2**53:
                        r, f = fx.requantize(i64(acc), i64(m), i64(s), i64(z), i64(lo), i64(hi))
                        vec.append((3, [acc, m, s, z, lo, hi], int(r), int(f)))
    for phase in (0, 1, fx.WEYL_STEP, 2**31, 2**32 - 1, 2**32 - 2):
        for j in (0, 1, 5, 1023, 2**20 + 7):
            for s in range(0, 33):
                lane = (j * fx.WEYL_LANE) & fx.WEYL_MASK
                vec.append((4, [phase, lane, s], int(fx.weyl_offset(i64(phase), i64(j), i64(s))), 0))
    return vec


@needs("iverilog")
def test_primitives_match_fixedpoint(tmp_path):
    """Each Verilog primitive returns fixedpoint's integer (and saturation flag) on every vector:
    rounding and offset shifts for s = 0..46 at ties, +-2 around powers of two and random values
    below 2^53; saturation at both ends of several code ranges; requantization over multiplier
    and shift edges; the Weyl offset over phases, lanes and s = 0..32."""
    vec = _vectors(np.random.default_rng(0))
    assert {v[0] for v in vec} == {0, 1, 2, 3, 4} and len(vec) > 5000
    lines = []
    for op, f, _, _ in vec:
        f = list(f) + [0] * (6 - len(f))
        lines.append(" ".join(f"{x & (2**64 - 1):x}" for x in [op] + f))
    (tmp_path / "vec.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "prim_tb.v").write_text(PRIM_TB)
    (tmp_path / rtl.PRIM_FILE).write_text(rtl.PRIMITIVES)
    r = subprocess.run(["iverilog", "-g2005", "-o", "sim", "prim_tb.v", rtl.PRIM_FILE], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    subprocess.run(["vvp", "-n", "sim"], cwd=tmp_path, check=True, capture_output=True)
    got = [tuple(map(int, ln.split())) for ln in (tmp_path / "res.txt").read_text().splitlines()]
    assert len(got) == len(vec)
    bad = [(v, g) for v, g in zip(vec, got) if (v[2], v[3]) != g]
    assert not bad, f"{len(bad)} mismatches, first: {bad[:3]}"


# ------------------------------------------------------------------------ shipped models ---

def _export(path: Path, d: Path, lanes: int):
    im = sources.load(path, torch_model=False)
    paths, facts = rtl.write_rtl(im.model, d, lanes=lanes)
    return im, [p for p in paths if p.suffix == ".v"], facts


def _check_report(rep: dict, n: int, facts: rtl.Facts):
    assert rep["first_difference"] is None, cosim.describe_difference(rep["first_difference"])
    assert rep["bit_exact"] == n
    assert rep["cycles_per_step_measured"] == [facts.cycles_per_step] * 2, "the stated cycles per step"
    assert rep["tail_cycles_measured"] == [rep["tail_cycles_stated"]] * 2


@needs("verilator")
@pytest.mark.parametrize("n", [pytest.param(20), pytest.param(200, marks=pytest.mark.slow)])
def test_default_model_smnist(tmp_path, n):
    """The default model (paper-small-hetero, 8 lanes) on the first ``n`` sMNIST test sequences (200 in
    the slow profile, which CI runs): every logit, saturation counter and final state code equal to
    the simulator's; every step takes the generator's stated cycles (1,409 at 8 lanes)."""
    im, srcs, facts = _export(DEFAULT, tmp_path / "rtl", 8)
    ds = data.load("smnist", "test", n)
    rep = cosim.cosim(facts, srcs, tmp_path / "rtl", im.model, im.input_codes(ds), ds.lengths)
    _check_report(rep, n, facts)
    assert facts.cycles_per_step == rtl.cycles_per_step(16, 32, 1, 1, 8) == 1409


@needs("verilator")
def test_japanesevowels_all_370(tmp_path):
    """JapaneseVowels (12 float features through the input quantizer, lengths 7..29, last-step
    pooling) on all 370 test sequences, 4 lanes: bit-exact, stated cycles."""
    im, srcs, facts = _export(JV, tmp_path / "rtl", 4)
    ds = data.load(str(ROOT / "data" / "uea" / "JapaneseVowels"), "test", None)
    assert len(ds) == 370
    rep = cosim.cosim(facts, srcs, tmp_path / "rtl", im.model, im.input_codes(ds), ds.lengths)
    _check_report(rep, 370, facts)


# ------------------------------------------------------------------------ random configs ---

@needs("iverilog")
@settings(max_examples=6, deadline=None)
@given(models(max_layers=2), quant_configs(), st.data())
def test_rtl_equals_simulator_random_models(m, qcfg, data_):
    """Random small models and quantization configs (any bits 2..16, asymmetric formats, dither,
    shared complex scales, narrow biases, mean or last pooling), any lane count dividing the modes:
    Icarus Verilog runs the generated design bit-exactly with the simulator, at the stated cycles."""
    import tempfile

    qm, arrays, P = random_case(m, qcfg, data_, 6, data_.draw(st.sampled_from([0.3, 1.0])))
    N2 = m.cfg.d_state // 2
    lanes = data_.draw(st.sampled_from([p for p in range(1, N2 + 1) if N2 % p == 0]))
    L = P.shape[1]
    lengths = np.full(len(P), L) if m.cfg.pool == "mean" else np.array([data_.draw(st.integers(1, L)) for _ in P])
    with tempfile.TemporaryDirectory() as t:
        paths, facts = rtl.write_rtl(arrays, Path(t), lanes=lanes)
        rep = cosim.cosim(facts, [p for p in paths if p.suffix == ".v"], Path(t), arrays, P, lengths,
                          simulator="icarus")
    assert rep["first_difference"] is None, cosim.describe_difference(rep["first_difference"])
    assert rep["bit_exact"] == len(P)
    if rep["cycles_per_step_measured"] is not None:
        assert rep["cycles_per_step_measured"] == [facts.cycles_per_step] * 2
    assert rep["tail_cycles_measured"] == [rep["tail_cycles_stated"]] * 2


def test_lanes_must_divide_modes(tmp_path):
    """write_rtl refuses a lane count that does not divide the number of modes."""
    im = sources.load(DEFAULT, torch_model=False)
    with pytest.raises(IntssmError, match="lanes must divide"):
        rtl.write_rtl(im.model, tmp_path, lanes=3)


# ------------------------------------------------------------------- the harness as a product ---

#: A one-bit bug: the lowest bit of every new x_re code is inverted before it is stored.
GOOD_LINE = "assign x_new[p * XW +: XW] = {sat_i[WXI-1:0], sat_r[WXR-1:0]};"
BAD_LINE = "assign x_new[p * XW +: XW] = {sat_i[WXI-1:0], sat_r[WXR-1:1], ~sat_r[0]};"


@pytest.mark.slow
@needs("iverilog")
def test_harness_catches_a_one_bit_bug(tmp_path):
    """The generated design with one inverted state bit: the harness reports sequence 0, the first
    step, the site (x_re of layer 0, channel 0, mode 0) and the value (the simulator's code with its
    lowest bit flipped); the unmodified design passes on the same sequences."""
    im, srcs, facts = _export(JV, tmp_path / "rtl", 4)
    ds = data.load(str(ROOT / "data" / "uea" / "JapaneseVowels"), "test", 3)
    P = im.input_codes(ds)
    top = (tmp_path / "rtl" / rtl.TOP_FILE).read_text()
    assert top.count(GOOD_LINE) == 1
    bad = tmp_path / "buggy_top.v"
    bad.write_text(top.replace(GOOD_LINE, BAD_LINE))
    prim = tmp_path / "rtl" / rtl.PRIM_FILE
    rep = cosim.cosim(facts, [prim, bad], tmp_path / "rtl", im.model, P, ds.lengths, simulator="icarus")
    d = rep["first_difference"]
    assert rep["bit_exact"] == 0 and d is not None
    assert d["sequence"] == 0 and d["step"] == 0
    assert d["site"] == "final state x_re[layer 0, channel 0, mode 0]"
    assert d["got"] == d["expected"] ^ 1
    assert "sequence 0, after step 0, final state x_re" in cosim.describe_difference(d)
    good = cosim.cosim(facts, srcs, tmp_path / "rtl", im.model, P, ds.lengths, simulator="icarus")
    assert good["first_difference"] is None and good["bit_exact"] == 3


@needs("iverilog")
def test_cli_export_rtl_and_cosim(tmp_path):
    """``intssm export-rtl`` then ``intssm cosim --dut``: the generated design passes (exit 0, JSON
    report); a buggy copy fails with exit 2 and one error line naming sequence, step, site and
    value; golden vectors of another model are refused."""
    from cli_helpers import intssm, ok_json

    d = tmp_path / "rtl"
    out = ok_json(intssm("export-rtl", JV, "-o", d, "--lanes", "4", "--json"))
    assert out["lanes"] == 4 and (d / "rtl.json").is_file()
    jv = ["--model", JV, "--seq", ROOT / "data" / "uea" / "JapaneseVowels", "--limit", "2", "--simulator", "icarus"]
    rep = ok_json(intssm("cosim", d, *jv, "--json"))
    assert rep["bit_exact"] == 2 and rep["first_difference"] is None
    bad = tmp_path / "bad.v"
    bad.write_text((d / rtl.TOP_FILE).read_text().replace(GOOD_LINE, BAD_LINE))
    r = intssm("cosim", d, "--dut", d / rtl.PRIM_FILE, "--dut", bad, *jv, "--json")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    diff = json.loads(r.stdout.strip())["first_difference"]  # the report, then the error
    assert diff["sequence"] == 0 and diff["step"] == 0 and diff["got"] == diff["expected"] ^ 1
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: the design differs from the simulator: sequence 0, after step 0, "
                                               "final state x_re[layer 0, channel 0, mode 0]"), r.stderr
    r = intssm("cosim", d, "--simulator", "icarus", "--limit", "1")  # the default model is not JV's
    assert r.returncode == 2 and "generated from another model" in r.stderr


# ------------------------------------------------------------------------------ synthesis ---

def _small_design(d: Path):
    from intssm.integer.export import from_quantized
    from test_cexport import _tiny

    qm = _tiny()  # 2 channels, 1 mode, 1 layer, w8a8
    return rtl.write_rtl(from_quantized(qm), d, lanes=1)[1]


@pytest.mark.slow
@needs("yosys")
def test_small_design_synthesizes_for_ice40(tmp_path):
    """A small model's design (2 channels, 1 mode, 1 layer) through Yosys synth_ice40 -dsp: it maps
    to iCE40 cells within the UP5K's logic cells, SB_MAC16 blocks and block RAMs."""
    facts = _small_design(tmp_path)
    rep = rtl.synthesize(tmp_path, facts, place=False, generic=False, timeout=600)
    assert 0 < rep["luts"] <= rtl.UP5K["lc"] and 0 < rep["flip_flops"] <= rtl.UP5K["lc"]
    assert 1 <= rep["sb_mac16"] <= rtl.UP5K["dsp"], "the multipliers map to DSP blocks"
    assert rep["bram_4k"] <= rtl.UP5K["bram"]
    assert (tmp_path / "synth" / "ice40.json").stat().st_size > 0
    assert "SB_MAC16" in rtl.describe_synthesis(rep)


@pytest.mark.slow
@needs("yosys")
@needs("nextpnr-ice40")
def test_small_design_places_and_routes(tmp_path):
    """The small design placed and routed by nextpnr-ice40 --up5k: it fits, its clock comes from the
    timing report of the design's clock (not a pseudo-clock), the figures derived from it are
    consistent, and the generic gate count is positive."""
    facts = _small_design(tmp_path)
    rep = rtl.synthesize(tmp_path, facts, timeout=1200)
    assert rep["fits"] is True
    assert 0 < rep["logic_cells"] <= rtl.UP5K["lc"]
    assert 1.0 < rep["fmax_mhz"] < 300.0
    assert rep["us_per_step"] == pytest.approx(facts.cycles_per_step / rep["fmax_mhz"])
    assert rep["generic"]["gates"] > 100 and rep["generic"]["flip_flops"] > 0
    assert (tmp_path / "synth" / "ice40.asc").stat().st_size > 0
    assert "max clock" in rtl.describe_synthesis(rep)
