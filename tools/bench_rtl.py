"""Hardware cost of the RTL export: Yosys synthesis and nextpnr place-and-route for the iCE40 UP5K,
and a generic Yosys gate count, of one model at several lane counts (docs/hardware.md).

    python tools/bench_rtl.py [MODEL] [--lanes 1,2,4,8] [--json out.json]

Each lane count: ``intssm export-rtl MODEL --lanes P --synth`` (:func:`intssm.integer.rtl.synthesize`)
into a temporary directory; prints LUTs, flip-flops, SB_MAC16, block RAMs, SPRAM, whether it fits
the UP5K, the maximum clock nextpnr reports, cycles per step, us per step and ms per sequence.
Heavy (minutes per lane count): not part of the test suite, which synthesizes one small design.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from intssm import outputs, sources  # noqa: E402
from intssm.integer import rtl  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=str(ROOT / "data" / "checkpoints" / "paper-small-hetero.pt"))
    ap.add_argument("--lanes", default="1,2,4,8", help="comma-separated lane counts (each must divide d_state/2)")
    ap.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args()
    lanes = [int(v) for v in args.lanes.split(",")]
    if args.json is not None:
        outputs.check_file(args.json, what="--json", suffix=".json")
    im = sources.load(args.model, torch_model=False)
    rows = []
    print(f"{'lanes':>5} {'mult':>4} {'LUT':>6} {'FF':>6} {'MAC16':>5} {'BRAM':>4} {'fits':>4} {'LC':>6} {'Fmax MHz':>8} "
          f"{'cyc/step':>8} {'us/step':>8} {'ms/seq':>8} {'gates':>7} {'s':>5}")
    for p in lanes:
        t0 = time.time()
        with tempfile.TemporaryDirectory() as d:
            _, facts = rtl.write_rtl(im.model, Path(d), p, source=args.model)
            r = rtl.synthesize(Path(d), facts, seed=args.seed)
        r["seconds"] = time.time() - t0
        rows.append(r)
        fm = r.get("fmax_mhz")
        fmax, us, ms = (f"{fm:.2f}", f"{r['us_per_step']:.2f}", f"{r['ms_per_sequence']:.1f}") if fm else ("-", "-", "-")
        print(f"{p:>5} {r['multipliers']:>4} {r['luts']:>6} {r['flip_flops']:>6} {r['sb_mac16']:>5} {r['bram_4k']:>4} "
              f"{'yes' if r['fits'] else 'no':>4} {r.get('logic_cells') or '-':>6} {fmax:>8} {r['cycles_per_step']:>8} "
              f"{us:>8} {ms:>8} {r['generic']['gates']:>7} {r['seconds']:>5.0f}", flush=True)
    if args.json is not None:
        outputs.write_text(args.json, json.dumps({"model": args.model, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
