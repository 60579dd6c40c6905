"""The export commands' recipes, and a model on a 32-bit microcontroller: its C export
cross-compiled, run in an emulator on real test sequences, checked integer for integer against the
simulator, and measured.

:func:`export_artifact` (``intssm export``), :func:`export_c` (``intssm export-c``),
:func:`export_rtl` (``intssm export-rtl``) and :func:`cosim` (``intssm cosim``) each load the
model once (one :class:`~intssm.datapath.intmodel.IntModel`, validated once) and return the result
and its text for the command to print.

:func:`deploy` is what ``intssm export-c MODEL -o DIR --target cortex-m4`` runs. It writes the C
export into ``DIR``, builds it for the target (:mod:`intssm.integer.mcu`), runs ``sequences`` test
sequences of the model's dataset and requires logits, saturation counters and final state equal
to :func:`intssm.integer.sim.simulate`'s; then reports bytes (deployed beside accounted), retired
instructions and estimated cycles per step. ``compare`` adds the same model as float32 C
(:mod:`intssm.integer.cfloat`) on a Cortex-M4F (hardware single precision) and on a Cortex-M3 and
a Cortex-M0+ (software float), and the integer build on the Cortex-M3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from intssm.errors import IntssmError

CLOCK_HZ = 80e6  # the clock of the milliseconds-per-sequence figures


def _scale(rec: dict, L: int) -> dict:
    c = rec["cycles_per_step"]  # None where no cycle table is kept (RISC-V)
    rec["ms_per_sequence_at_80mhz"] = None if c is None else (c * L + rec["finish_cycles"]) / CLOCK_HZ * 1e3
    return rec


def _public(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("logits", "counters", "states")}


TARGETS = ("cortex-m4", "cortex-m3", "cortex-m0plus", "riscv32")
#: The float32 reference's builds of ``compare``: hardware single precision, and software float
#: (libgcc) on an ARMv7-M and an ARMv6-M core.
FLOAT_TARGETS = ("cortex-m4f", "cortex-m3", "cortex-m0plus")


def check_options(target: str, sequences: int, count_steps: int) -> None:
    """Refuse a target, sequence count or step count :func:`deploy` cannot run, before any work."""
    from intssm.integer import mcu

    if target not in TARGETS:
        raise IntssmError(f"--target must be host, {' or '.join(TARGETS)}, got {target!r}")
    for name, v in (("--sequences", sequences), ("--count-steps", count_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise IntssmError(f"{name} must be a positive integer, got {v!r}")
    if not mcu.available(target):
        raise IntssmError(f"the {target} target needs the cross-compiler and the emulator ({mcu.INSTALL_HINT})")


def load_case(model, sequences: int):
    """(loaded model (:class:`intssm.sources.LoadedModel`), its test data, their input codes) for
    :func:`deploy`: everything it reads, loaded (the model validated, once) and checked before any
    work (a bad model or dataset fails here)."""
    from intssm import data, sources

    im = sources.load(model)
    ds = data.load(im.dataset or "smnist", "test", sequences)
    im.check_data(ds)
    return im, ds, im.input_codes(ds)


def deploy(model, out_dir: Path, target: str = "cortex-m4", sequences: int = 200, count_steps: int = 64,
           compare: bool = False, progress=None, case=None, state_layout: str = "packed") -> dict:
    """Export, build, verify and measure ``model`` (any source :func:`intssm.sources.load` takes) for
    ``target``; returns the report (see the module docstring). ``case``: :func:`load_case`'s result,
    if already loaded."""
    from intssm.datapath import layout
    from intssm.integer import cexport, cost, mcu
    from intssm.integer.sim import simulate

    check_options(target, sequences, count_steps)
    im, ds, P = case if case is not None else load_case(model, sequences)
    m = im.model
    seq = im.dataset or "smnist"
    lens = ds.lengths if ds.varlen else None
    L = P.shape[1]
    out_dir = Path(out_dir)
    cexport.write_c(m, out_dir, state_layout)
    _, widths = cexport.check(m)
    cfg, qcfg = m.cfg, m.qcfg
    elf = mcu.build(out_dir, target, L)
    # a float-data model runs from the raw float32 readings, through the export's own input path
    feed = np.ascontiguousarray(ds.x, np.float32) if m.float_input else P
    rec = mcu.measure(elf, target, feed, count_steps, progress, lens)
    # the proof: every sequence's integers equal the simulator's
    same = np.zeros(len(P), bool)
    for b in range(len(P)):  # one traced run per sequence: logits, counters and the state after its last step
        lb = None if lens is None else lens[b:b + 1]
        lg, cnt, (tr, ti) = simulate(m, P[b:b + 1], trace=True, lengths=lb)
        last = L - 1 if lens is None else int(lens[b]) - 1
        same[b] = (np.array_equal(rec["logits"][b], lg[0]) and np.array_equal(rec["counters"][b], cnt[0])
                   and np.array_equal(rec["states"][b][0], tr[last]) and np.array_equal(rec["states"][b][1], ti[last]))
    mem = cost.memory(cfg, qcfg, m.seq_len)
    mults = sum(v for k, v in cost.step_ops(cfg, qcfg, m.seq_len, m.input.bits).items() if k.startswith("mul"))
    report = {
        "model": str(model), "target": target, "dataset": seq, "sequence_length": L,
        "inputs": "float32 readings, through the C input path" if m.float_input else "uint8 codes",
        "lengths": None if lens is None else [int(lens.min()), int(lens.max())],
        "integer": _public(_scale(rec, L)) | {
            "bit_exact_sequences": int(same.sum()), "sequences": len(P),
            "test_accuracy_on_these": float((rec["logits"].argmax(1) == ds.y).mean()),
            "multiplications_per_step": mults,
            "instructions_per_multiplication": rec["instructions_per_step"] / mults},
        "accounted": {"flash_bytes": mem["flash_bytes"], "ram_bytes": mem["ram_bytes"], "bytes": mem["bytes"],
                      "fp32_flash_bytes": mem["fp32_flash_bytes"], "fp32_bytes": mem["fp32_bytes"]},
        "c_tables": cexport.c_storage(m, state_layout), "state_layout": state_layout,
        "sites": {k: {"term": "int64" if w.term64 else "int32", "accumulator": "int64" if w.acc64 else "int32",
                      "accumulator_bound_log2": round(float(np.log2(max(w.acc_bound, 1))), 2)}
                  for k, w in widths.items()},
        "sites_64bit": [k for k, w in widths.items() if w.acc64 or w.term64],
        "shared_update": cexport.shared_update(m.arrays),
        "counters": layout.counter_names(cfg.n_layers),
        "cycle_table": {"source": "Cortex-M4 / Cortex-M3 Technical Reference Manuals, Table 3-1",
                        "m4": mcu.CYCLES["m4"], "m3": mcu.CYCLES["m3"], "taken_branch_refill": mcu.TAKEN_BRANCH_REFILL},
        "clock_hz": CLOCK_HZ,
    }
    if compare:
        report["compare"] = _compare(im, out_dir, P, ds, L, count_steps, target, feed)
    report["elf"] = str(elf)
    if not same.all():
        bad = np.flatnonzero(~same)[:5].tolist()
        report["error"] = f"{int((~same).sum())} of {len(P)} sequences differ from the simulator (first: {bad})"
    return report


def _compare(im, out_dir: Path, P, ds, L: int, count_steps: int, target: str, feed) -> dict:
    """The integer build on the other core, and the float32 model on a Cortex-M4F, a Cortex-M3 and a
    Cortex-M0+ (:data:`FLOAT_TARGETS`)."""
    import torch

    from intssm.datapath.inputq import model_input
    from intssm.integer import mcu
    from intssm.integer import cfloat

    out = {}
    other = "cortex-m3" if target == "cortex-m4" else "cortex-m4"  # the float builds run on the M4F and the M3
    elf = mcu.build(out_dir, other, L)
    lens = ds.lengths if ds.varlen else None
    out[f"integer {other}"] = _public(_scale(mcu.measure(elf, other, feed[:1], count_steps, lengths=None if lens is None else lens[:1]), L))
    if im.qm is None:
        return out  # an integer artifact: no float weights to compare with
    if im.model.float_input:
        return out | {"float32": "not compared: the float C reference takes raw uint8 inputs only"}
    import copy

    model = copy.deepcopy(im.qm.model).float()
    fdir = Path(out_dir) / "float32"
    cfloat.write_float_c(model, fdir)
    n = min(len(P), 2)  # a few sequences check the float build; software float on an M3 is slow to emulate
    with torch.no_grad():
        ref = model(torch.from_numpy(model_input(P[:n])), mode="recurrent").numpy()
    for t in FLOAT_TARGETS:
        elf = mcu.build(fdir, t, L, libm=True)
        r = mcu.measure(elf, t, P[:n], count_steps)
        err = float(np.abs(r["logits"] - ref).max())
        out[f"float32 {t}"] = _public(_scale(r, L)) | {"max_abs_logit_error_vs_torch": err,
                                                        "same_class_as_torch": int((r["logits"].argmax(1) == ref.argmax(1)).sum()),
                                                        "sequences": n}
    return out


# ------------------------------------------------------------------ the export commands' recipes ---

def export_artifact(ckpt, out) -> tuple[dict, str]:
    """Write the integer artifact (``.npz``: arrays and manifest, :mod:`intssm.integer.export`) of a
    quantized checkpoint (or a float one, after the default PTQ)."""
    from intssm import outputs, sources
    from intssm.integer import export

    out = Path(out)
    outputs.check_file(out, inputs=[ckpt], what="--out", suffix=".npz")
    lm = sources.load(ckpt)
    if lm.qm is None:  # the manifest's per-tensor scales come from the quantized model
        raise IntssmError(f"{ckpt} is already an integer artifact; export takes a checkpoint (.pt)")
    man = export.save(out, lm.qm, lm.model)
    size = out.stat().st_size
    return ({"out": str(out), "bytes": size, "format_version": man["format_version"],
             "datapath_version": man["datapath_version"]}, f"wrote {out} ({size} bytes)")


C_EXPORT_FILES = ("main.c", "README.md")  # what export-c writes besides the model's header and source (cexport.file_names)
UNVERIFIED_MARK = "UNVERIFIED"  # export-c --target: present until the emulated target matched the simulator


def export_c(model, out, target: str = "host", sequences: int = 200, count_steps: int = 64, compare: bool = False,
             report: bool = False, state_layout: str = "packed", prefix: str = "intssm", adc_scale: str = "",
             show: bool = True) -> tuple[dict, str, str | None]:
    """``intssm export-c``: write the C export of ``model`` (any source) into ``out``; with an
    emulated ``target``, also build, verify and measure it there (:func:`deploy`), the model
    loaded and validated once. ``adc_scale``: comma-separated float32 scales (float-data models).
    Returns (result, text, error): ``error`` is the emulated target's failure to report after
    printing (None if it matched the simulator)."""
    import json

    from intssm import outputs, sources
    from intssm.integer import cexport
    from intssm.progress import progress_bar

    out = Path(out)
    cexport.check_prefix(prefix)
    outputs.check_dir(out, inputs=[model], what="--out", writes=(*cexport.file_names(prefix), *C_EXPORT_FILES, UNVERIFIED_MARK))
    if target != "host" and (prefix != "intssm" or adc_scale):
        raise IntssmError("--prefix and --adc-scale are for --target host: the emulator's builds use the default prefix "
                          "and float32 readings")
    if state_layout not in cexport.STATE_LAYOUTS:
        raise IntssmError(f"--state-layout must be one of {', '.join(cexport.STATE_LAYOUTS)}, got {state_layout!r}")
    if target == "host":
        if report or compare:
            raise IntssmError("--report and --compare need an emulated --target (cortex-m4, cortex-m3, cortex-m0plus, riscv32)")
        m = sources.load(model).model
        try:
            scales = [float(v) for v in adc_scale.split(",")] if adc_scale else None
        except ValueError:
            raise IntssmError(f"--adc-scale must be numbers separated by commas, got {adc_scale!r}") from None
        files = cexport.write_c(m, out, state_layout, prefix, scales)
        ro = cexport.rodata_bytes_estimate(m.arrays, m.qcfg, state_layout)
        return ({"out": str(out), "files": [str(f) for f in files], "rodata_bytes_estimate": ro, "model": str(model)},
                "\n".join(str(f) for f in files) + f"\n({ro} bytes of constant data)", None)
    check_options(target, sequences, count_steps)
    case = load_case(model, sequences)  # a bad model or dataset fails before any work
    m = case[0].model
    cexport.c_storage(m, state_layout)  # a layout the model cannot take (e.g. folded and dithered) is refused before any write
    mark = outputs.write_text(out / UNVERIFIED_MARK, f"The C files and ELF in this directory are not yet verified on the "
                              f"emulated {target}: `intssm export-c --target {target}` removes this file only once "
                              "every test sequence matched the simulator bit for bit.\n", quiet=True)
    with progress_bar(f"{target} (emulated)", len(case[2]), enabled=show) as adv:
        rep = deploy(model, out, target, sequences, count_steps, compare, progress=adv, case=case, state_layout=state_layout)
    if "error" not in rep:
        mark.unlink()
    path = outputs.write_text(out / target / "report.json", json.dumps(rep, indent=1) + "\n") if report else None
    error = f"emulated {target}: {rep['error']}" if "error" in rep else None
    return rep | {"report": str(path) if path else None}, describe(rep, path), error


def describe(r: dict, path=None) -> str:
    """:func:`deploy`'s report in lines a person reads (``path``: where it was written, if it was)."""
    i, a = r["integer"], r["accounted"]
    lines = [f"{r['model']} on an emulated {r['target']} ({r['elf']})",
             f"  bit-exact with the simulator: {i['bit_exact_sequences']} / {i['sequences']} test sequences "
             f"(logits, saturation counters, final state)",
             f"  flash {i['flash_bytes']} B (code {i['text']}, constants {i['rodata']}); accounted constants {a['flash_bytes']} B; "
             f"float32 weights {a['fp32_flash_bytes']} B",
             f"  RAM {i['ram_bytes']} B (state {i['bss'] + i['data']}, peak stack {i['stack_peak_bytes']}); accounted {a['ram_bytes']} B",
             f"  per step: {i['instructions_per_step']:.0f} instructions ({i['instructions_per_multiplication']:.2f} per "
             + (f"multiplication), ~{i['cycles_per_step']:.0f} cycles; {i['ms_per_sequence_at_80mhz']:.1f} ms per "
                f"{r['sequence_length']}-step sequence at 80 MHz" if i["cycles_per_step"] is not None
                else "multiplication); no cycle estimate for this core"),
             f"  64-bit accumulators: {', '.join(r['sites_64bit']) or 'none'}"]
    for name, m in r.get("compare", {}).items():
        if isinstance(m, dict):
            lines.append(f"  {name}: flash {m['flash_bytes']} B, RAM {m['ram_bytes']} B, {m['instructions_per_step']:.0f} "
                         f"instructions, ~{m['cycles_per_step']:.0f} cycles per step, {m['ms_per_sequence_at_80mhz']:.1f} ms per sequence"
                         if m["cycles_per_step"] is not None else f"  {name}: {m['instructions_per_step']:.0f} instructions per step")
        else:
            lines.append(f"  {name}: {m}")
    if path:
        lines.append(f"  report: {path}")
    return "\n".join(lines)


def export_rtl(model, out, lanes: int = 8, synth: bool = False, report: bool = False) -> tuple[dict, str]:
    """``intssm export-rtl``: write the model as synthesizable Verilog (:mod:`intssm.integer.rtl`);
    ``synth``: also synthesize, place and route for the iCE40 UP5K; ``report``: write the figures
    to ``out/report.json``."""
    import json

    from intssm import outputs, sources
    from intssm.integer import rtl

    outputs.check_dir(out, inputs=[model], what="--out")
    if report and not synth:
        raise IntssmError("--report needs --synth")
    m = sources.load(model, torch_model=False).model
    files, facts = rtl.write_rtl(m, out, lanes, source=str(model))
    res = {"out": str(out), "files": [str(f) for f in files], "lanes": facts.P, "multipliers": facts.multipliers,
           "cycles_per_step": facts.cycles_per_step, "multiplications_per_step": facts.multiplications_per_step}
    text = (f"wrote {len(files)} files to {out}: {facts.P} lanes + 1 scalar multiplier, {facts.cycles_per_step} cycles "
            f"per step ({facts.multiplications_per_step} multiplications)")
    if synth:
        rep = rtl.synthesize(Path(out), facts)
        res["synthesis"] = rep
        text += "\n" + rtl.describe_synthesis(rep)
        if report:
            res["report"] = str(outputs.write_text(Path(out) / "report.json", json.dumps(res, indent=1) + "\n"))
            text += f"\nreport: {res['report']}"
    return res, text


def cosim(rtl_dir, model, dut=None, seq: str | None = None, split: str = "test", limit: int = 200,
          simulator: str = "verilator", top: str = "intssm_top") -> tuple[dict, str, str | None]:
    """``intssm cosim``: run a design with the documented ports on ``limit`` sequences and require
    the simulator's logits, saturation counters and final state (:mod:`intssm.integer.cosim`).
    ``seq``: the dataset (None: the model's own). Returns (result, text, error): ``error`` names the
    first difference (None if none)."""
    from intssm import data, sources
    from intssm.integer import cosim as co
    from intssm.integer import rtl

    facts = rtl.read_facts(rtl_dir)
    lm = sources.load(model, torch_model=False)
    if rtl.arrays_sha256(lm.model.arrays) != facts.arrays_sha256:
        raise IntssmError(f"{rtl_dir} was generated from another model than {model} (give --model)")
    seq = seq or lm.dataset or "smnist"
    ds = data.load(seq, split, limit)
    P = lm.input_codes(ds)
    lm.check_data(ds)
    srcs = dut or [Path(rtl_dir) / f for f in (rtl.PRIM_FILE, rtl.TOP_FILE)]
    rep = co.cosim(facts, srcs, Path(rtl_dir), lm.model, P, ds.lengths, top=top, simulator=simulator)
    rep |= {"dut": [str(s) for s in srcs], "seq": seq, "split": split}
    cyc = rep["cycles_per_step_measured"]
    text = (f"{', '.join(map(str, srcs))}: bit-exact with the simulator on {rep['bit_exact']} / {rep['sequences']} sequences "
            f"(logits, saturation counters, final state)" + (f"; {cyc[0]}..{cyc[1]} cycles per step" if cyc else ""))
    error = (f"the design differs from the simulator: {co.describe_difference(rep['first_difference'])}"
             if rep["first_difference"] is not None else None)
    return rep, text, error
