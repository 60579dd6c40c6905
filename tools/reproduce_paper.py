"""Post-training-quantization study of arXiv 2506.12480 on real sMNIST, with intssm's integer simulator.

    python tools/reproduce_paper.py [--ckpt data/checkpoints/paper-small-fp32.pt] [--out runs/study]
                                    [--limit N] [--workers 2] [--parts a,b,d]

Every accuracy is the integer simulator's on the sMNIST test set (``--limit`` for a quick run).
Parts (the paper's numbering):
  a  accuracy vs bits of Abar (A_re and A_im) and, separately, of the state x (2..16), all other
     components at 16 bits (the closest the integer datapath has to "float")
  b  per-tensor vs per-head scales and symmetric vs asymmetric quantizers, everything at 8 bits
  d  heterogeneous configurations: accuracy vs memory (intssm.cost.memory), with the Pareto front
Runs are independent; each writes one CSV row (resumable: rows already in the CSV are skipped),
runs execute in a process pool, and PNG plots are drawn from the CSVs.
QAT (part c) is not reproduced here: it needs the fused quantized scan (open issue).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIELDS = ["part", "name", "config", "accuracy", "n", "bytes", "fp32_bytes", "reduction", "weights_bytes", "saturations"]


def _configs(parts):
    from intssm.qspec import ACTIVATIONS, WEIGHTS, QFormat, QuantConfig

    base16 = QuantConfig(**{n: QFormat(16, symmetric=(n != "act" and n != "sig")) for n in WEIGHTS + ACTIVATIONS})
    runs = []
    if "a" in parts:
        for b in range(2, 17):
            runs.append(("a", f"A{b}", replace(base16, A_re=QFormat(b), A_im=QFormat(b))))
            runs.append(("a", f"x{b}", replace(base16, x_re=QFormat(b), x_im=QFormat(b))))
            runs.append(("a", f"Ax{b}", replace(base16, A_re=QFormat(b), A_im=QFormat(b), x_re=QFormat(b), x_im=QFormat(b))))
    if "b" in parts:
        for pc in (False, True):
            for sym in (True, False):
                fm = QFormat(8, symmetric=sym, per_channel=pc)
                kw = {n: fm for n in ("A_re", "A_im", "B", "C", "D", "x_re", "x_im", "enc_w", "mix_w", "dec_w")}
                kw.update({n: QFormat(8, symmetric=sym) for n in ("h", "y", "glu", "pool")})
                runs.append(("b", f"8bit {'per-head' if pc else 'per-tensor'} {'sym' if sym else 'asym'}", QuantConfig(**kw)))
    if "d" in parts:
        for wb in (3, 4, 5, 6, 8):
            for ab in (4, 6, 8):
                for sb in (6, 8, 10, 12, 14):
                    ph = lambda b: QFormat(b, per_channel=True)  # noqa: E731
                    q = QuantConfig(B=ph(wb), C=ph(wb), D=ph(wb), enc_w=QFormat(8), mix_w=QFormat(wb, per_channel=True),
                                    dec_w=QFormat(8, per_channel=True), A_re=ph(sb), A_im=ph(sb), x_re=ph(sb), x_im=ph(sb),
                                    h=QFormat(ab), y=QFormat(ab), act=QFormat(ab, False), glu=QFormat(ab),
                                    sig=QFormat(ab, False), pool=QFormat(8), logits=QFormat(16))
                    runs.append(("d", f"w{wb} a{ab} Ax{sb}", q))
    return runs


def _run_one(ckpt, part, name, qcfg_dict, limit, calib):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from intssm import checkpoint, cost, data
    from intssm.errors import IntssmError
    from intssm.export import integer_model
    from intssm.qmodel import ptq
    from intssm.qspec import QuantConfig
    from intssm.sim import simulate

    q = QuantConfig.from_dict(qcfg_dict)
    model, _ = checkpoint.load(ckpt)
    cal = data.load("smnist", "train", calib)
    te = data.load("smnist", "test", limit)
    mem = cost.memory(model.cfg, q, te.x.shape[1])
    row = {"part": part, "name": name, "config": json.dumps(qcfg_dict), "n": len(te), "bytes": mem["bytes"],
           "fp32_bytes": mem["fp32_bytes"], "reduction": round(mem["reduction"], 4), "weights_bytes": mem["weights_bytes"]}
    try:
        qm, _ = ptq(model.double(), q, torch.from_numpy(cal.as_float()))
    except IntssmError as e:
        return row | {"accuracy": "", "saturations": f"refused: {e}"}
    lg, cnt, _ = simulate(integer_model(qm), te.x, model.cfg.pool == "mean", len(qm.dp.counters))
    return row | {"accuracy": float((lg.argmax(1) == te.y).mean()), "saturations": int(cnt.sum())}


def plots(out: Path, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = [r for r in rows if r["part"] == "a" and r["accuracy"] != ""]
    if a:
        fig, ax = plt.subplots(figsize=(6, 4))
        for pre, lab in (("A", "Abar bits (rest 16)"), ("x", "state x bits (rest 16)"), ("Ax", "Abar and x bits")):
            pts = sorted((int(r["name"][len(pre):]), float(r["accuracy"])) for r in a
                         if r["name"].startswith(pre) and r["name"][len(pre):].isdigit())
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=lab)
        ax.set_xlabel("bits")
        ax.set_ylabel("integer test accuracy (%)")
        ax.set_title("PTQ of paper-small on sMNIST (integer simulator)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "ptq_bits.png", dpi=110)
        plt.close(fig)
    d = [r for r in rows if r["part"] in ("b", "d") and r["accuracy"] != ""]
    if d:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [float(r["bytes"]) for r in d]
        ys = [100 * float(r["accuracy"]) for r in d]
        ax.scatter(xs, ys, s=14, alpha=0.6, label="PTQ configurations")
        front, best = [], -1.0
        for x, y in sorted(zip(xs, ys)):
            if y > best:
                front.append((x, y))
                best = y
        ax.plot([p[0] for p in front], [p[1] for p in front], "r-o", ms=4, label="Pareto front")
        ax.set_xlabel("memory: flash + RAM (bytes)")
        ax.set_ylabel("integer test accuracy (%)")
        ax.set_title("accuracy vs memory (PTQ)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "pareto.png", dpi=110)
        plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=str(ROOT / "data/checkpoints/paper-small-fp32.pt"))
    ap.add_argument("--out", default=str(ROOT / "runs/study"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--parts", default="a,b,d")
    a = ap.parse_args()
    from rich.progress import Progress

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "ptq.csv"
    done = set()
    rows = []
    if csv_path.exists():
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        done = {(r["part"], r["name"]) for r in rows}
    todo = [(p, n, q) for p, n, q in _configs(a.parts.split(",")) if (p, n) not in done]
    new_file = not csv_path.exists()
    with open(csv_path, "a", newline="") as f, Progress() as prog, ProcessPoolExecutor(a.workers) as ex:
        w = csv.DictWriter(f, FIELDS)
        if new_file:
            w.writeheader()
        task = prog.add_task("PTQ runs", total=len(todo))
        futs = [ex.submit(_run_one, a.ckpt, p, n, q.to_dict(), a.limit, a.calib) for p, n, q in todo]
        for fu in as_completed(futs):
            r = fu.result()
            w.writerow(r)
            f.flush()
            rows.append({k: str(v) for k, v in r.items()})
            prog.advance(task)
    plots(out, rows)
    print(f"{len(rows)} rows in {csv_path}; plots in {out}")


if __name__ == "__main__":
    main()
