"""PTQ accuracy against the state-equalization strength alpha (intssm.training.equalize), per quant config.

    python tools/equalize_study.py [--ckpt data/checkpoints/paper-small-seed7-fp32.pt] [--n 2000]
        [--alphas 0,0.25,0.5,0.75,1] [--configs A.json,B.json,...] [-o docs/equalize_study]

For each config and alpha: equalize the float model on 256 training sequences, calibrate (PTQ) on
the same sequences, score the first ``--n`` validation sequences with the integer simulator.
Writes ``OUT.csv`` (config, alpha, accuracy) and ``OUT.png`` (accuracy against alpha, one line per
config), and prints the table. The default configs isolate the two low-bit parts: the 6-bit state
with 12-bit Abar, the 6-bit Abar with a 12-bit state, both at 6 bits, and both at 6 bits with B and C at 4 bits
(6.36x weights); then the last three with Abar asymmetric (``A6asym``: unsigned codes and a zero
point per head, which doubles the resolution of heads whose Abar parts are all of one sign).
B, C and D are 8 bits in the ``BCD8`` configs, so that the range equalization moves into them
costs little.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from intssm.outputs import atomic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROG = ROOT / "docs/configs/progressive"
DEFAULT_CONFIGS = ["hetero-A12-x6-dither-a8-BCD8.json", "hetero-A6-x12-dither-a8-BCD8.json",
                   "hetero-A6-x6-dither-a8-BCD8.json", "hetero-6x-A6-x6-dither-a8-BC4.json",
                   "hetero-A6asym-x12-dither-a8-BCD8.json", "hetero-A6asym-x6-dither-a8-BCD8.json",
                   "hetero-6x-A6asym-x6-dither-a8-BC4.json"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=str(ROOT / "data/checkpoints/paper-small-seed7-fp32.pt"))
    ap.add_argument("--n", type=int, default=2000, help="validation sequences")
    ap.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--configs", default=",".join(str(PROG / c) for c in DEFAULT_CONFIGS))
    ap.add_argument("-o", "--out", default=str(ROOT / "docs/equalize_study"))
    a = ap.parse_args()

    import torch

    from intssm import data
    from intssm.training import checkpoint
    from intssm.progress import progress_bar
    from intssm.integer.score import int_accuracy
    from intssm.training.ptq import ptq
    from intssm.datapath.qspec import get_config

    torch.set_num_threads(1)
    model, ck = checkpoint.load(a.ckpt)
    model = model.double()
    seq = ck.get("dataset", {}).get("seq", "smnist")
    u = torch.from_numpy(data.load(seq, "train", 256).as_float())
    va = data.load(seq, "val", a.n)
    alphas = [float(t) for t in a.alphas.split(",")]
    configs = a.configs.split(",")
    rows = []
    with progress_bar("PTQ per alpha", len(alphas) * len(configs)) as adv:
        for alpha in alphas:
            for c in configs:
                qm, _ = ptq(model, get_config(c), u, equalize=alpha)
                rows.append({"config": Path(c).stem, "alpha": alpha, "accuracy": int_accuracy(qm, va.x, va.y)})
                adv(1, info=f"{Path(c).stem} alpha {alpha}")
    out = Path(a.out)
    with atomic(out.with_suffix(".csv")) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["config", "alpha", "accuracy"])
        w.writeheader()
        w.writerows(rows)
    names = [Path(c).stem for c in configs]
    print(f"{a.ckpt}, PTQ, first {len(va)} validation sequences\n" + f"{'config':<40}" +
          "".join(f"{'a=' + str(al):>8}" for al in alphas))
    for n in names:
        print(f"{n:<40}" + "".join(f"{r['accuracy']:>8.3f}" for r in rows if r["config"] == n))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for n in names:
        ax.plot(alphas, [100 * r["accuracy"] for r in rows if r["config"] == n], "o-", label=n)
    ax.set_xlabel("state equalization strength alpha")
    ax.set_ylabel(f"PTQ integer accuracy, {len(va)} val sequences (%)")
    ax.set_title(Path(a.ckpt).name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic(out.with_suffix(".png")) as tmp:
        fig.savefig(tmp, dpi=120)
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
