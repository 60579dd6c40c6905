"""The shipped integer models on emulated microcontrollers, beside the float32 build of the same
model: bytes, instructions and estimated cycles per step, milliseconds per sequence at 80 MHz.
Prints the Markdown table of docs/deploy.md and writes the full reports as JSON.

    python tools/bench_mcu.py                     # the default and its shared-scale twin (packed state, the
                                                  # state as 16-bit halves, the folded layout), ~10 minutes
    python tools/bench_mcu.py --models paper-small-hetero.pt --sequences 50 --out mcu.json

Each model: the C export built for a Cortex-M4 and a Cortex-M3 (integer), its float parent's
weights as float32 C for a Cortex-M4F (hardware single precision), a Cortex-M3 and a Cortex-M0+
(software float, libgcc); every integer build first reproduces the simulator on ``--sequences`` test
sequences (``intssm export-c MODEL --target cortex-m4 --compare`` per model). ``--more-targets``
(default: cortex-m0plus, riscv32) adds the integer build on those cores, each reproducing the
simulator on the same sequences (``intssm export-c MODEL --target riscv32``); RISC-V has no cycle
table, so its rows give instructions only. Instructions are
counted by the emulator (exact); cycles are estimated from the Technical Reference Manuals' cycle
table (intssm/integer/mcu.py), so they do not depend on the machine this runs on.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from intssm.deploy import deploy  # noqa: E402
from intssm.outputs import check_file, write_text  # noqa: E402

NAMES = {"cortex-m0plus": "Cortex-M0+", "riscv32": "RV32IMC"}
DEFAULT = ("paper-small-hetero.pt,paper-small-hetero.pt:folded,paper-small-hetero-shared.pt,"
           "paper-small-hetero-shared.pt:halves,paper-small-hetero-shared.pt:folded")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT, help="checkpoints in data/checkpoints (comma-separated) or paths, "
                    "each optionally :halves or :folded (the state layout of export-c --state-layout)")
    ap.add_argument("--sequences", type=int, default=20, help="test sequences each integer build must reproduce")
    ap.add_argument("--count-steps", type=int, default=64, help="steps over which instructions are counted")
    ap.add_argument("--out", type=Path, default=None, help="write every report as one JSON file")
    ap.add_argument("--more-targets", default="cortex-m0plus,riscv32", help="integer builds on further cores (comma-separated; '' for none)")
    a = ap.parse_args()
    if a.out is not None:
        check_file(a.out, what="--out", suffix=".json")
    rows, reports, floats_shown = [], {}, set()
    for item in a.models.split(","):
        name, _, state_layout = item.partition(":")
        state_layout = state_layout or "packed"
        path = Path(name) if Path(name).exists() else ROOT / "data" / "checkpoints" / name
        with tempfile.TemporaryDirectory() as t:
            rep = deploy(path, Path(t), "cortex-m4", a.sequences, a.count_steps, compare=True, state_layout=state_layout)
        if "error" in rep:
            sys.exit(f"error: {path.name}: {rep['error']}")
        label = path.stem + ("" if state_layout == "packed" else f", --state-layout {state_layout}")
        reports[label] = rep
        acc = rep["accounted"]
        i, c = rep["integer"], rep["compare"]
        builds = [("int, Cortex-M4", i), ("int, Cortex-M3", c["integer cortex-m3"]),
                  ("float32, Cortex-M4F", c.get("float32 cortex-m4f")), ("float32, Cortex-M3 (soft)", c.get("float32 cortex-m3")),
                  ("float32, Cortex-M0+ (soft)", c.get("float32 cortex-m0plus"))]
        for t in filter(None, a.more_targets.split(",")):
            with tempfile.TemporaryDirectory() as d:
                r2 = deploy(path, Path(d), t, a.sequences, a.count_steps, state_layout=state_layout)
            if "error" in r2:
                sys.exit(f"error: {path.name} on {t}: {r2['error']}")
            rep[f"integer {t}"] = r2
            builds.append((f"int, {NAMES.get(t, t)}", r2["integer"]))
            print(f"{label}: {r2['integer']['bit_exact_sequences']}/{r2['integer']['sequences']} bit-exact on {t}", flush=True)
        for what, m in builds:
            if not isinstance(m, dict) or (what.startswith("float32") and path in floats_shown):
                continue  # the float32 builds do not depend on the state layout: shown once per model
            cyc = "—" if m["cycles_per_step"] is None else f"{m['cycles_per_step']:,.0f}"
            ms = "—" if m["ms_per_sequence_at_80mhz"] is None else f"{m['ms_per_sequence_at_80mhz']:,.0f}"
            rows.append(f"| {label} | {what} | {m['text']} | {m['rodata']} | {m['bss'] + m['data']} + {m['stack_peak_bytes']} | "
                        f"{m['instructions_per_step']:,.0f} | {cyc} | {ms} |")
        floats_shown.add(path)
        print(f"{label}: {i['bit_exact_sequences']}/{i['sequences']} bit-exact on the Cortex-M4; accounted "
              f"{acc['flash_bytes']} B flash + {acc['ram_bytes']} B RAM (float32 {acc['fp32_flash_bytes']} + "
              f"{acc['fp32_bytes'] - acc['fp32_flash_bytes']}); {i['multiplications_per_step']} multiplications per step; "
              f"64-bit sites: {', '.join(rep['sites_64bit']) or 'none'}; shared update: {rep['shared_update']}", flush=True)
    print("\n| model | build | code B | constants B | RAM B (static + peak stack) | instructions / step | cycles / step (est.) | ms / sequence at 80 MHz |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if a.out is not None:
        write_text(a.out, json.dumps(reports, indent=1) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
