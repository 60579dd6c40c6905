"""A model on a 32-bit microcontroller: its C export cross-compiled, run in an emulator on real test
sequences, checked integer for integer against the simulator, and measured.

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
    """(integer model, its test data, their input codes) for :func:`deploy`: everything it reads,
    loaded and checked before any work (a bad model or dataset fails here)."""
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
    seq = im.dataset or "smnist"
    lens = ds.lengths if ds.varlen else None
    L = P.shape[1]
    out_dir = Path(out_dir)
    cexport.write_c(im.arrays, im.description(), out_dir, state_layout)
    desc = im.description()
    _, dims, cfg, qcfg, widths = cexport.check(im.arrays, desc)
    elf = mcu.build(out_dir, target, L)
    # a float-data model runs from the raw float32 readings, through the export's own input path
    feed = np.ascontiguousarray(ds.x, np.float32) if im.iq is not None else P
    rec = mcu.measure(elf, target, feed, count_steps, progress, lens)
    # the proof: every sequence's integers equal the simulator's
    same = np.zeros(len(P), bool)
    for b in range(len(P)):  # one traced run per sequence: logits, counters and the state after its last step
        lb = None if lens is None else lens[b:b + 1]
        lg, cnt, (tr, ti) = simulate(im.arrays, P[b:b + 1], im.mean_pool, len(im.counters), trace=True, lengths=lb)
        last = L - 1 if lens is None else int(lens[b]) - 1
        same[b] = (np.array_equal(rec["logits"][b], lg[0]) and np.array_equal(rec["counters"][b], cnt[0])
                   and np.array_equal(rec["states"][b][0], tr[last]) and np.array_equal(rec["states"][b][1], ti[last]))
    mem = cost.memory(cfg, qcfg, im.seq_len)
    mults = sum(v for k, v in cost.step_ops(cfg, qcfg, im.seq_len).items() if k.startswith("mul"))
    report = {
        "model": str(model), "target": target, "dataset": seq, "sequence_length": L,
        "inputs": "float32 readings, through the C input path" if im.iq is not None else "uint8 codes",
        "lengths": None if lens is None else [int(lens.min()), int(lens.max())],
        "integer": _public(_scale(rec, L)) | {
            "bit_exact_sequences": int(same.sum()), "sequences": len(P),
            "test_accuracy_on_these": float((rec["logits"].argmax(1) == ds.y).mean()),
            "multiplications_per_step": mults,
            "instructions_per_multiplication": rec["instructions_per_step"] / mults},
        "accounted": {"flash_bytes": mem["flash_bytes"], "ram_bytes": mem["ram_bytes"], "bytes": mem["bytes"],
                      "fp32_flash_bytes": mem["fp32_flash_bytes"], "fp32_bytes": mem["fp32_bytes"]},
        "c_tables": cexport.c_storage(im.arrays, desc, state_layout), "state_layout": state_layout,
        "sites": {k: {"term": "int64" if w.term64 else "int32", "accumulator": "int64" if w.acc64 else "int32",
                      "accumulator_bound_log2": round(float(np.log2(max(w.acc_bound, 1))), 2)}
                  for k, w in widths.items()},
        "sites_64bit": [k for k, w in widths.items() if w.acc64 or w.term64],
        "shared_update": cexport.shared_update(im.arrays),
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

    from intssm.integer import mcu
    from intssm.integer import cfloat

    out = {}
    other = "cortex-m3" if target == "cortex-m4" else "cortex-m4"  # the float builds run on the M4F and the M3
    elf = mcu.build(out_dir, other, L)
    lens = ds.lengths if ds.varlen else None
    out[f"integer {other}"] = _public(_scale(mcu.measure(elf, other, feed[:1], count_steps, lengths=None if lens is None else lens[:1]), L))
    if im.qm is None:
        return out  # an integer artifact: no float weights to compare with
    if im.iq is not None:
        return out | {"float32": "not compared: the float C reference takes raw uint8 inputs only"}
    import copy

    model = copy.deepcopy(im.qm.model).float()
    fdir = Path(out_dir) / "float32"
    cfloat.write_float_c(model, fdir)
    n = min(len(P), 2)  # a few sequences check the float build; software float on an M3 is slow to emulate
    with torch.no_grad():
        ref = model(torch.from_numpy(P[:n].astype(np.float32) / 255.0), mode="recurrent").numpy()
    for t in FLOAT_TARGETS:
        elf = mcu.build(fdir, t, L, libm=True)
        r = mcu.measure(elf, t, P[:n], count_steps)
        err = float(np.abs(r["logits"] - ref).max())
        out[f"float32 {t}"] = _public(_scale(r, L)) | {"max_abs_logit_error_vs_torch": err,
                                                        "same_class_as_torch": int((r["logits"].argmax(1) == ref.argmax(1)).sum()),
                                                        "sequences": n}
    return out
