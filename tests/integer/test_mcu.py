"""The C export on a 32-bit microcontroller: cross-compiled for Cortex-M4 (and M3), run in the
Unicorn emulator, integer for integer the simulator's.

Needs ``arm-none-eabi-gcc`` (Debian ``gcc-arm-none-eabi`` + ``libnewlib-arm-none-eabi``) and the
``unicorn`` and ``pyelftools`` packages; ``.ci/run`` installs them and these tests never skip in CI.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from intssm.integer import cexport, mcu
from intssm.integer.sim import simulate

# tests/ is not a package: pytest puts it on sys.path
from c_helpers import random_case, usable_layout
from strategies import models, quant_configs
from cli_helpers import assert_clean_error, intssm, ok_json

needs_mcu = pytest.mark.skipif(not all(mcu.available(t) for t in mcu.TARGETS) and not os.environ.get("CI"),
                               reason=f"Cortex-M or RISC-V toolchain or emulator missing ({mcu.INSTALL_HINT}); CI installs them")

CKPT = Path(__file__).resolve().parents[2] / "data" / "checkpoints"


def test_instruction_classes():
    """The cycle table's classes, from objdump's Thumb-2 mnemonics (suffixes, conditions, widths)."""
    cases = {"ldrsh.w": "ld", "ldr": "ld", "ldrd": "ldd", "strb.w": "st", "str": "st", "pop": "multi", "push": "multi",
             "ldmia.w": "multi", "smlal": "mlal", "umull": "mull", "mla": "mla", "mls": "mla", "mul.w": "mul",
             "muls": "mul", "sdiv": "div", "bne.n": "branch", "b.n": "branch", "bl": "branch", "bx": "branch",
             "cbz": "branch", "bic": "alu", "bfi": "alu", "sbfx": "alu", "smlabb": "alu", "smlad": "alu",
             "vldr": "vld", "vstr": "vld", "vmla.f32": "vmulacc", "vfma.f32": "vmulacc", "vdiv.f32": "vdiv",
             "vadd.f32": "valu", "vpush": "vmulti", "addeq": "alu", "moveq": "alu", "ble.n": "branch"}
    for m, c in cases.items():
        assert mcu.instruction_class(m) == c, m
    assert mcu.CYCLES["m4"]["mlal"] == 1 and mcu.CYCLES["m3"]["mlal"] == 7  # TRM: single-cycle MAC on the M4 only


@needs_mcu
def test_default_model_bit_exact_on_cortex_m4(tmp_path, monkeypatch):
    """The shipped default on an emulated Cortex-M4 (`export-c --target cortex-m4`'s recipe): 200
    real sMNIST test sequences give the simulator's logits, saturation counters and final state;
    bytes and counts are measured; the model is validated once in the whole run."""
    from intssm import deploy
    from intssm.datapath import layout

    calls = []
    real = layout.validate
    monkeypatch.setattr(layout, "validate", lambda *a, **k: calls.append(1) or real(*a, **k))
    rep, _, error = deploy.export_c(CKPT / "paper-small-hetero.pt", tmp_path, "cortex-m4", sequences=200, count_steps=8,
                                    show=False)
    assert len(calls) == 1
    i = rep["integer"]
    assert "error" not in rep and error is None and not (tmp_path / deploy.UNVERIFIED_MARK).exists()
    assert i["bit_exact_sequences"] == i["sequences"] == 200
    assert i["test_accuracy_on_these"] > 0.9
    # the constants in flash are the accounted bytes (packed fields), within 5%
    assert abs(i["rodata"] - rep["accounted"]["flash_bytes"]) <= 0.05 * rep["accounted"]["flash_bytes"]
    assert i["rodata"] == rep["c_tables"]["c_flash_bytes"] + (i["rodata"] - rep["c_tables"]["c_flash_bytes"]) and \
        0 <= i["rodata"] - rep["c_tables"]["c_flash_bytes"] < 16  # alignment only
    # RAM: .bss is exactly the state struct c_storage predicts; the stack was measured
    assert i["bss"] + i["data"] == rep["c_tables"]["c_ram_bytes"] and 0 < i["stack_peak_bytes"] < 1024
    assert 0 < i["instructions_per_step"] < 100_000 and i["cycles_per_step"] >= i["instructions_per_step"]
    assert rep["sites_64bit"] == [k for k, s in rep["sites"].items() if s["accumulator"] == "int64" or s["term"] == "int64"]


@needs_mcu
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m3"])
def test_shared_scale_model_with_16bit_halves(tmp_path, target):
    """The shipped shared-scale model with the state as 16-bit halves: on the Cortex-M4 the complex
    product runs on the DSP extension's dual multiplies (SMUSD, SMUADX; SSAT clamps), on the M3 in
    portable C; both give the simulator's integers on real sequences."""
    from intssm.deploy import deploy

    rep = deploy(CKPT / "paper-small-hetero-shared.pt", tmp_path, target, sequences=8, count_steps=2,
                 state_layout="halves")
    assert "error" not in rep and rep["integer"]["bit_exact_sequences"] == 8 and rep["shared_update"]
    dis = mcu._disassembly(Path(rep["elf"]))
    mnemonics = {m for _, m, _, _ in dis.values()}
    assert ({"smusd", "smuadx", "ssat"} <= mnemonics) == (target == "cortex-m4")
    assert rep["integer"]["bss"] >= 4 * 512  # 16 + 16 bits per mode


@needs_mcu
@pytest.mark.parametrize("name", ["paper-small-hetero.pt", "paper-small-hetero-shared.pt"])
def test_folded_layout_on_cortex_m4(tmp_path, name):
    """The shipped models in the folded layout on the emulated Cortex-M4: the simulator's integers
    (logits, counters, final state) on real sequences whose state clamps (the saturation flag's
    rare path), the update on the DSP extension (SSAT, SMLABB, SMLATT, PKHBT, SMLAD, MRS), at most
    3 instructions per multiplication, fewer estimated cycles than the float32 build's published
    30.9 k (docs/deploy.md); the per-mode words in flash."""
    from intssm.deploy import deploy

    from intssm import data, sources

    rep = deploy(CKPT / name, tmp_path, "cortex-m4", sequences=4, count_steps=2, state_layout="folded")
    i = rep["integer"]
    assert "error" not in rep and i["bit_exact_sequences"] == 4
    im = sources.load(CKPT / name)  # the state clamps: counted through the saturation flag's rare path
    _, cnt, _ = simulate(im.model, im.input_codes(data.load("smnist", "test", 4)))
    assert cnt[:, 1].min() > 0
    mnemonics = {m for _, m, _, _ in mcu._disassembly(Path(rep["elf"])).values()}
    assert {"ssat", "smlabb", "smlatt", "pkhbt", "smlad", "mrs"} <= mnemonics
    assert i["instructions_per_multiplication"] <= 3.0 and i["cycles_per_step"] < 30_000
    assert i["rodata"] >= (20 if "shared" in name else 28) * 512 and i["bss"] + i["data"] == rep["c_tables"]["c_ram_bytes"]


@needs_mcu
@pytest.mark.parametrize("target", ["riscv32", "cortex-m0plus"])
def test_default_model_on_riscv32_and_cortex_m0plus(tmp_path, target):
    """The shipped default on an emulated RV32IMC core and an ARMv6-M core (freestanding builds;
    64-bit products through libgcc where the core has no long multiply): the simulator's logits,
    counters and final state on real test sequences, bytes and instructions measured (cycles only
    where the core has a cycle table)."""
    from intssm.deploy import deploy

    rep = deploy(CKPT / "paper-small-hetero.pt", tmp_path, target, sequences=6, count_steps=2)
    i = rep["integer"]
    assert "error" not in rep and i["bit_exact_sequences"] == i["sequences"] == 6
    assert i["bss"] + i["data"] == rep["c_tables"]["c_ram_bytes"] and 0 < i["instructions_per_step"] < 200_000
    assert (i["cycles_per_step"] is None) == (target == "riscv32")
    mnemonics = {m for _, m, _, _ in mcu._disassembly(Path(rep["elf"]), target).values()}
    assert ({"mul", "c.mv", "mv"} & mnemonics) if target == "riscv32" else ("muls" in mnemonics and "smull" not in mnemonics)


@needs_mcu
def test_riscv_sizes_count_small_data(tmp_path):
    """RV32 builds put tables of up to 8 bytes in .srodata (basicmotions-hetero's dec_b): the linked
    ELF counts them in its constants -- the linker script merges the small sections into .rodata,
    .data and .bss -- so .rodata holds every table of the export, and no small section is left apart."""
    from elftools.elf.elffile import ELFFile

    from intssm import sources

    m = sources.load(CKPT / "basicmotions-hetero.pt").model
    cexport.write_c(m, tmp_path)
    elf = mcu.build(tmp_path, "riscv32", 4)
    with open(elf, "rb") as f:
        ef = ELFFile(f)
        names = {s.name for s in ef.iter_sections()}
        ro = ef.get_section_by_name(".rodata")
        lo, hi = ro["sh_addr"], ro["sh_addr"] + ro["sh_size"]
        sym = {s.name: s["st_value"] for s in ef.get_section_by_name(".symtab").iter_symbols()}
    assert not names & {".srodata", ".sdata", ".sbss"}
    assert lo <= sym["dec_b"] < hi  # an 8-byte table, compiled into .srodata.dec_b
    assert mcu.sizes(elf).rodata >= cexport.c_storage(m)["c_flash_bytes"]


@needs_mcu
@pytest.mark.parametrize("name,n,target", [("japanesevowels-hetero", 370, "cortex-m4"), ("basicmotions-hetero", 40, "cortex-m4"),
                                           ("basicmotions-hetero", 40, "riscv32"),
                                           pytest.param("japanesevowels-hetero", 370, "riscv32", marks=pytest.mark.slow)])
def test_float_data_models_from_raw_readings(tmp_path, name, n, target):
    """The shipped float-data models on the emulated Cortex-M4 and RV32IMC from the raw float32
    readings of every test sequence (variable lengths for JapaneseVowels), through the export's C
    input path: the simulator's logits, counters and final state for the host's input codes."""
    from intssm.deploy import deploy

    rep = deploy(CKPT / f"{name}.pt", tmp_path, target, sequences=1000, count_steps=2)
    assert "error" not in rep and rep["inputs"].startswith("float32")
    assert rep["integer"]["bit_exact_sequences"] == rep["integer"]["sequences"] == n


@needs_mcu
@settings(max_examples=4)
@given(models(max_layers=2), quant_configs(), st.data(), st.sampled_from(["cortex-m4", "cortex-m3", "cortex-m0plus", "riscv32"]),
       st.sampled_from(cexport.STATE_LAYOUTS))
def test_random_models_bit_exact_on_mcu(m, qcfg, data, target, state_layout):
    """Random small models and quantization configs (shared complex scales, dither, 16-bit formats
    included) on the emulated cores: the simulator's integers."""
    qm, arrays, P = random_case(m, qcfg, data, 8)
    L, n = P.shape[1], len(qm.counters)
    state_layout = usable_layout(arrays, state_layout)
    with tempfile.TemporaryDirectory() as t:
        cexport.write_c(arrays, Path(t), state_layout)
        r = mcu.measure(mcu.build(Path(t), target, L), target, P, count_steps=1)
    lg, cnt, _ = simulate(arrays, P)
    assert np.array_equal(r["logits"], lg) and np.array_equal(r["counters"], cnt)
    for b in range(len(P)):
        _, _, (tr, ti) = simulate(arrays, P[b:b + 1], trace=True)
        assert np.array_equal(r["states"][b][0], tr[-1]) and np.array_equal(r["states"][b][1], ti[-1])


@needs_mcu
def test_float_reference_on_cortex_m4f(tmp_path):
    """The float32 C reference computes the Torch model's recurrent logits (to float32 rounding) on
    the emulated Cortex-M4F, and the same with software float on the Cortex-M3 and the Cortex-M0+
    (every build of deploy's comparison)."""
    from intssm.deploy import FLOAT_TARGETS

    from intssm import data
    from intssm.integer import cfloat
    from intssm.training import checkpoint

    model, _ = checkpoint.load(CKPT / "paper-small-seed7-fp32.pt")
    model = model.float()
    ds = data.load("smnist", "test", 2)
    P = ds.x[:, :40].astype(np.uint8)  # 40 steps: the logits of a prefix, last-step pooling not needed
    cfloat.write_float_c(model, tmp_path)
    with torch.no_grad():
        ref = model(torch.from_numpy(P.astype(np.float32) / 255.0), mode="recurrent").numpy()
    assert FLOAT_TARGETS == ("cortex-m4f", "cortex-m3", "cortex-m0plus")
    for t in FLOAT_TARGETS:
        r = mcu.measure(mcu.build(tmp_path, t, P.shape[1], libm=True), t, P, count_steps=2)
        assert np.abs(r["logits"] - ref).max() < 1e-3 * max(1.0, np.abs(ref).max()), t
        assert r["rodata"] >= 4 * 3834  # every float32 parameter of the recurrence is in flash


@needs_mcu
def test_cli_target_report_and_refusals(tmp_path):
    """export-c --target cortex-m4 --report: 3 sequences bit-exact and a JSON report equal to the
    printed figures; a bad target, --report without --target, --sequences 0 and a missing
    model are one-line refusals before any work."""
    out = tmp_path / "c"
    rep = ok_json(intssm("export-c", CKPT / "paper-small-hetero.pt", "-o", out, "--target", "cortex-m4",
                         "--sequences", "3", "--count-steps", "2", "--report", "--json"))
    assert rep["integer"]["bit_exact_sequences"] == 3 and Path(rep["report"]).is_file()
    assert json.loads(Path(rep["report"]).read_text())["integer"]["instructions_per_step"] == rep["integer"]["instructions_per_step"]
    for args, msg in ((["--target", "pdp11"], "--target"), (["--report"], "--target"), (["--target", "cortex-m4", "--sequences", "0"], "--sequences")):
        assert_clean_error(intssm("export-c", CKPT / "paper-small-hetero.pt", "-o", tmp_path / "d", *args), msg)
    # a missing model fails before any work: one error line, no progress bar
    assert_clean_error(intssm("export-c", tmp_path / "missing.pt", "-o", tmp_path / "d", "--target", "cortex-m4"), "not found")
