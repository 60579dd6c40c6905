"""Accuracy vs memory of quantized paper-small checkpoints, beside the paper's point.

    python tools/qat_front.py [--dir DIR] [--out docs/img/qat_front.png] [--csv docs/qat_front.csv]

Each checkpoint of MODELS found in DIR (then in data/checkpoints) is run by the integer simulator
on the full sMNIST test set (10,000 sequences); memory is ``intssm memory``'s: everything the
datapath stores, and weights and biases only (the paper's way of counting). The paper's
heterogeneous QAT point, 95.99% at 6.3x, is drawn on the weights-and-biases panel at 1/6.3 of our
float32 weights and biases. Only the curated models are shipped; the study models are made by the
commands in docs/results.md (each section names its checkpoint), into DIR under the names below.
A checkpoint found in neither place is skipped and named.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from intssm.outputs import atomic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = [  # (checkpoint, how it was made); the first four are shipped
    ("paper-small-w8a8-state12.pt", "PTQ w8a8-state12"),
    ("paper-small-hetero.pt", "QAT hetero-3b-x12, frozen Abar from float seed 7 (the default)"),
    ("paper-small-hetero-shared.pt", "QAT hetero-3b-x12-shared, frozen Abar from float seed 7"),
    ("paper-small-hetero-A6asym-x6-eq.pt", "QAT 6-bit asymmetric Abar, 6-bit dithered equalized state, 8-bit weights"),
    ("paper-small-hetero-x8.pt", "QAT paper-hetero (8-bit state)"),
    ("paper-small-hetero-x10.pt", "QAT hetero-x10"),
    ("paper-small-hetero-6x-x10.pt", "QAT hetero-3b-x10, progressive"),
    ("paper-small-hetero-6x-x12.pt", "QAT hetero-3b-x10, 12-bit state"),
    ("paper-small-hetero-6x-x12-frozen.pt", "QAT hetero-3b-x12, frozen Abar from float seed 2"),
    ("paper-small-hetero-6x-x8-dither.pt", "QAT hetero-3b-x10, 8-bit dithered state, frozen Abar"),
    ("paper-small-hetero-A6-x6-dither.pt", "QAT hetero-3b-x10, 6-bit Abar and dithered state, frozen Abar"),
    ("paper-small-hetero-A6-x6-dither-a8-BC4.pt", "as above, activations 8 bits, B and C 4 bits"),
    ("paper-small-hetero-6x-A6asym-x6-eq.pt", "QAT 6-bit asymmetric Abar, 6-bit dithered equalized state, B and C 4 bits"),
    ("paper-small-hetero-6x-mix4.pt", "QAT hetero-3b-x10, mix/dec 4-bit per row"),
    ("paper-small-hetero-x10-small.pt", "QAT hetero-x10, mix/dec 4, B/C 3"),
    ("paper-small-hetero-state7.pt", "QAT 7-bit A and x"),
    ("paper-small-hetero-state6.pt", "QAT 6-bit A and x"),
]
PAPER = (95.99, 6.3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=ROOT / "data/checkpoints", help="where the study checkpoints are")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/img/qat_front.png")
    ap.add_argument("--csv", type=Path, default=ROOT / "docs/qat_front.csv")
    a = ap.parse_args()
    from intssm import sources as integer
    from intssm.integer import cost
    from intssm import data

    te = data.load("smnist", "test")
    rows = []
    for name, how in MODELS:
        path = next((p for p in (a.dir / name, ROOT / "data/checkpoints" / name) if p.is_file()), None)
        if path is None:
            print(f"{name:34s} skipped: not in {a.dir} (docs/results.md has the command that makes it)")
            continue
        im = integer.load(path)
        lg, _, _ = integer.run(im.model, te.x)
        mem = cost.memory(im.model.cfg, im.model.qcfg, im.model.seq_len)
        rows.append({"checkpoint": name, "how": how, "test_accuracy": float((lg.argmax(1) == te.y).mean()),
                     "bytes": mem["bytes"], "reduction": mem["reduction"], "weights_bytes": mem["weights_bytes"],
                     "weights_reduction": mem["weights_reduction"], "fp32_weights_bytes": mem["fp32_weights_bytes"]})
        r = rows[-1]
        print(f"{name:34s} {100 * r['test_accuracy']:6.2f}%  {r['bytes']:6d} B ({r['reduction']:.2f}x)  "
              f"weights and biases {r['weights_bytes']:5d} B ({r['weights_reduction']:.2f}x)")
    if not rows:
        sys.exit("error: none of the checkpoints found")
    with atomic(a.csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    paper_bytes = rows[0]["fp32_weights_bytes"] / PAPER[1]
    panels = ((axes[0], "bytes", "total memory: flash + RAM (bytes)", None),
              (axes[1], "weights_bytes", "weights and biases (bytes)", None),
              (axes[2], "weights_bytes", "weights and biases (bytes), near the paper's point", (2100, 3100, 91.5, 97.5)))
    for ax, key, label, zoom in panels:
        for j, r in enumerate(rows):
            ax.scatter(r[key], 100 * r["test_accuracy"], s=36, color=plt.cm.tab20(j % 20), marker="os^D"[j // 10 % 4],
                       label=f"{r['how']}: {100 * r['test_accuracy']:.2f}%")
        if key == "weights_bytes":
            ax.scatter(paper_bytes, PAPER[0], marker="*", s=140, color="k",
                       label=f"paper, heterogeneous QAT: {PAPER[0]}% at {PAPER[1]}x")
        if zoom:
            ax.set_xlim(zoom[0], zoom[1])
            ax.set_ylim(zoom[2], zoom[3])
            ax.axvline(paper_bytes, color="k", lw=0.6, ls=":")
            ax.axhline(PAPER[0], color="k", lw=0.6, ls=":")
        else:
            ax.set_ylim(30, 100)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("integer test accuracy (%)")
    fig.suptitle("paper-small on sMNIST: shipped quantized models (integer simulator, 10,000 test sequences)")
    fig.tight_layout()
    with atomic(a.out) as tmp:
        fig.savefig(tmp, dpi=120)
    print(f"wrote {a.csv} and {a.out}")


if __name__ == "__main__":
    main()
