"""Post-training-quantization study of arXiv 2506.12480 on real sMNIST, with intssm's integer simulator.

    python tools/reproduce_paper.py [--models d16=data/checkpoints/paper-small-fp32.pt,...] [--out runs/study]
                                    [--limit N] [--workers 2] [--parts a,b,c,d,e]
                                    [--executor local|ray] [--ray-address ADDR]

Every accuracy is the integer simulator's on the sMNIST test set (``--limit`` for a quick run).
Parts (the paper's numbering):
  a  accuracy vs bits of Abar (A_re and A_im) and, separately, of the state x (2..16), all other
     components at 16 bits (the closest the integer datapath has to "float")
  b  per-tensor vs per-head scales and symmetric vs asymmetric quantizers, everything at 8 bits,
     under each range policy (min/max, 99.9th percentile, MSE)
  c  QAT with the three parameterisations of Abar (continuous, frozen, discrete) at Abar/x bits
     2..8 (every other component 8-bit, per head where the datapath allows), written to qat.csv
     with the PTQ accuracy of the same configuration before QAT; ``--qat-epochs``,
     ``--qat-limit`` (training sequences per epoch) and ``--qat-minutes`` (per-run budget) size it
  d  heterogeneous configurations: accuracy vs memory (intssm.integer.cost.memory), with the Pareto front
  e  part c's question asked of Abar alone: the three parameterisations at Abar bits 5, 6, 7, 8, 10
     with the state x at 12 bits per head (so its rounding is not the bottleneck), to qat.csv
``--models`` names several float checkpoints: parts a and b run on each (model name prefixed to
the run name unless it is d16); c, d and e run on the first.
Runs are independent; each writes one CSV row (resumable: rows already in the CSV are skipped),
runs are submitted through :mod:`intssm.executor` (local processes, or ``--executor ray``), and
PNG plots are drawn from the CSVs.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import replace
from pathlib import Path
from intssm.outputs import atomic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIELDS = ["part", "name", "config", "accuracy", "n", "bytes", "fp32_bytes", "reduction", "weights_bytes", "saturations"]
QAT_FIELDS = ["part", "name", "param", "bits", "config", "ptq_accuracy", "accuracy", "best_val_int_acc", "epochs_run",
              "train_sequences", "seconds", "n", "bytes", "reduction"]


def _configs(parts):
    from intssm.datapath.qspec import ACTIVATIONS, WEIGHTS, QFormat, QuantConfig

    base16 = QuantConfig(**{n: QFormat(16, symmetric=(n != "act" and n != "sig")) for n in WEIGHTS + ACTIVATIONS})
    runs = []
    if "a" in parts:
        for b in range(2, 17):
            runs.append(("a", f"A{b}", replace(base16, A_re=QFormat(b), A_im=QFormat(b))))
            runs.append(("a", f"x{b}", replace(base16, x_re=QFormat(b), x_im=QFormat(b))))
            runs.append(("a", f"Ax{b}", replace(base16, A_re=QFormat(b), A_im=QFormat(b), x_re=QFormat(b), x_im=QFormat(b))))
    if "b" in parts:
        for pol in ("minmax", "p99.9", "mse"):
            for pc in (False, True):
                for sym in (True, False):
                    fm = QFormat(8, symmetric=sym, per_channel=pc, range=pol)
                    kw = {n: fm for n in ("A_re", "A_im", "B", "C", "D", "x_re", "x_im", "enc_w", "mix_w", "dec_w")}
                    kw.update({n: QFormat(8, symmetric=sym, range=pol) for n in ("h", "y", "glu", "pool")})
                    kw["act"] = QFormat(8, symmetric=False, range=pol)
                    name = f"8bit {'per-head' if pc else 'per-tensor'} {'sym' if sym else 'asym'}" + ("" if pol == "minmax" else f" {pol}")
                    runs.append(("b", name, QuantConfig(**kw)))
    # c: Abar and x together (2..8 bits); e: Abar alone (5..10 bits), the state at 12 bits so its
    # rounding is not the bottleneck (the paper's claim is about Abar's precision)
    for part, widths, name, x_bits in (("c", range(2, 9), "Ax{}", None), ("e", (5, 6, 7, 8, 10), "A{}", 12)):
        if part not in parts:
            continue
        ph = lambda bb: QFormat(bb, per_channel=True)  # noqa: E731
        for b in widths:
            xb = x_bits or b
            q = QuantConfig(A_re=ph(b), A_im=ph(b), x_re=ph(xb), x_im=ph(xb), B=ph(8), C=ph(8), D=ph(8),
                            dec_w=QFormat(8, per_channel=True))
            for param in ("continuous", "frozen", "discrete"):
                runs.append((part, f"{param} {name.format(b)}", q))
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


def _run_qat(ckpt, part, name, qcfg_dict, limit, calib, epochs, qat_limit, minutes, val_limit=1000, seed=0):
    """One part-c/e run: PTQ, QAT (param from the run name; ``seed`` orders the training data),
    integer test accuracy of the best model."""
    import time

    import torch

    from intssm import data
    from intssm.training import checkpoint
    from intssm.integer import cost
    from intssm.errors import IntssmError
    from intssm.integer.export import from_quantized
    from intssm.integer.score import int_accuracy
    from intssm.training.qat import QATArgs, kept, restore, train
    from intssm.training.ptq import ptq
    from intssm.datapath.qspec import QuantConfig
    from intssm.integer.sim import simulate

    param, bits = name.split()[0], int(re.search(r" Ax?(\d+)", name).group(1))
    q = QuantConfig.from_dict(qcfg_dict)
    model, _ = checkpoint.load(ckpt)
    cal = data.load("smnist", "train", calib)
    te = data.load("smnist", "test", limit)
    mem = cost.memory(model.cfg, q, te.x.shape[1])
    row = {"part": part, "name": name, "param": param, "bits": bits, "config": json.dumps(qcfg_dict), "n": len(te),
           "bytes": mem["bytes"], "reduction": round(mem["reduction"], 4)}

    def test_acc(qm):
        lg, _, _ = simulate(from_quantized(qm), te.x)
        return float((lg.argmax(1) == te.y).mean())

    try:
        qm, _ = ptq(model.double(), q, torch.from_numpy(cal.as_float()))
    except IntssmError as e:
        return row | {"accuracy": "", "ptq_accuracy": f"refused: {e}"}
    row["ptq_accuracy"] = test_acc(qm)
    t0 = time.time()
    args = QATArgs(param=param, epochs=epochs, batch_size=64, lr=1e-3, limit=qat_limit, val_limit=val_limit, seed=seed,
                   max_minutes=minutes)
    best, hist, _ = train(qm, "smnist", args, int_accuracy)
    restore(qm, best)
    return row | {"accuracy": test_acc(qm), "best_val_int_acc": kept(hist)[0],
                  "epochs_run": len(hist) - 1, "train_sequences": qat_limit or 50000, "seconds": round(time.time() - t0, 1)}


def _run_one(ckpt, part, name, qcfg_dict, limit, calib):
    import torch

    from intssm import data
    from intssm.training import checkpoint
    from intssm.integer import cost
    from intssm.errors import IntssmError
    from intssm.integer.export import from_quantized
    from intssm.training.ptq import ptq
    from intssm.datapath.qspec import QuantConfig
    from intssm.integer.sim import simulate

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
    lg, cnt, _ = simulate(from_quantized(qm), te.x)
    return row | {"accuracy": float((lg.argmax(1) == te.y).mean()), "saturations": int(cnt.sum())}


def _series(rows, pre):
    """(bits, accuracy) points of the part-a runs named ``pre`` + bits, sorted by bits."""
    return sorted((int(r["name"][len(pre):]), float(r["accuracy"])) for r in rows
                  if r["name"].startswith(pre) and r["name"][len(pre):].isdigit())


def _finish(fig, ax, path, xlabel, title, ylabel="integer test accuracy (%)"):
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def plots(out: Path, rows, qrows=()):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    a = [r for r in rows if r["part"] == "a" and r["accuracy"] != ""]
    if a:
        fig, ax = plt.subplots(figsize=(6, 4))
        for pre, lab in (("A", "Abar bits (rest 16)"), ("x", "state x bits (rest 16)"), ("Ax", "Abar and x bits")):
            pts = _series(a, pre)
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=lab)
        _finish(fig, ax, out / "ptq_bits.png", "bits", "PTQ of paper-small on sMNIST (integer simulator)")
    models = sorted({r["name"].split(":")[0] for r in a if ":" in r["name"]}, key=lambda m: (m[0] != "d", int(m[1:])))
    if models:
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in ["d16"] + models:
            pts = _series(a, "Ax" if m == "d16" else f"{m}:Ax")
            lab = f"d_model 16, seed {m[1:]}" if m.startswith("s") else f"d_model {m[1:]}" + (", seed 0" if m == "d16" else "")
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-" if m.startswith("d") else ":", label=lab)
        _finish(fig, ax, out / "ptq_width.png", "bits of Abar and x (rest 16)", "PTQ vs model width (d_model)")
    for part, png, xlab in (("c", "qat_bits.png", "bits of Abar and x (rest 8)"),
                            ("e", "qat_abar_bits.png", "bits of Abar (state x 12, rest 8)")):
        c = [r for r in qrows if r.get("accuracy", "") != "" and r["part"] == part]
        if not c:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for param in ("continuous", "frozen", "discrete"):
            by_bits = {}
            for r in c:
                if r["param"] == param:
                    by_bits.setdefault(int(r["bits"]), []).append(100 * float(r["accuracy"]))
            if not by_bits:
                continue
            xs = sorted(by_bits)
            ax.errorbar(xs, [np.mean(by_bits[b]) for b in xs], yerr=[np.std(by_bits[b]) for b in xs], fmt="o-",
                        capsize=3, label=f"QAT {param}" + (" (mean, sd over seeds)" if max(map(len, by_bits.values())) > 1 else ""))
        pts = sorted({(int(r["bits"]), float(r["ptq_accuracy"])) for r in c if r["ptq_accuracy"][:1].isdigit()})
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "k--", label="PTQ")
        _finish(fig, ax, out / png, xlab, "QAT parameterisations of Abar")
    d = [r for r in rows if r["part"] in ("b", "d") and r["accuracy"] != "" and ":" not in r["name"]]  # the first model only
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
        _finish(fig, ax, out / "pareto.png", "memory: flash + RAM (bytes)", "accuracy vs memory (PTQ)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="d16=" + str(ROOT / "data/checkpoints/paper-small-fp32.pt"),
                    help="comma-separated name=checkpoint; parts a and b run on each, c, d and e on the first")
    ap.add_argument("--out", default=str(ROOT / "runs/study"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--parts", default="a,b,d")
    ap.add_argument("--executor", default="local", help="local | ray")
    ap.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray instance)")
    ap.add_argument("--only", default=None, help="regular expression: run only the runs whose name matches")
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--qat-limit", type=int, default=None, help="training sequences per QAT epoch (default all)")
    ap.add_argument("--qat-minutes", type=float, default=0.0, help="per-run QAT time budget (0 = none)")
    ap.add_argument("--qat-seeds", type=int, default=1, help="QAT seeds (data order) per part c/e configuration: 0..N-1")
    a = ap.parse_args()
    from rich.progress import Progress

    from intssm.executor import get_executor

    models = dict(m.split("=", 1) for m in a.models.split(","))
    first = next(iter(models.values()))
    parts = a.parts.split(",")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = {"ptq.csv": [], "qat.csv": []}
    for p, n, q in _configs(parts):
        if p in ("a", "b"):
            for mname, path in models.items():
                nm = n if mname == "d16" else f"{mname}:{n}"
                jobs["ptq.csv"].append((_run_one, FIELDS, dict(ckpt=path, part=p, name=nm, qcfg_dict=q.to_dict(), limit=a.limit, calib=a.calib)))
        elif p in ("c", "e"):
            for sd in range(a.qat_seeds):
                jobs["qat.csv"].append((_run_qat, QAT_FIELDS, dict(
                    ckpt=first, part=p, name=n + (f" seed{sd}" if sd else ""), qcfg_dict=q.to_dict(), limit=a.limit,
                    calib=a.calib, epochs=a.qat_epochs, qat_limit=a.qat_limit, minutes=a.qat_minutes, seed=sd)))
        else:
            jobs["ptq.csv"].append((_run_one, FIELDS, dict(ckpt=first, part=p, name=n, qcfg_dict=q.to_dict(), limit=a.limit, calib=a.calib)))
    if a.only:
        jobs = {k: [j for j in v if re.search(a.only, j[2]["name"])] for k, v in jobs.items()}
    all_rows = {}
    with get_executor(a.executor, a.workers, a.ray_address) as ex:
        for fname, todo in jobs.items():
            csv_path = out / fname
            rows = []
            if csv_path.exists():
                with open(csv_path) as f:
                    rows = list(csv.DictReader(f))
            done = {(r["part"], r["name"]) for r in rows}
            todo = [j for j in todo if (j[2]["part"], j[2]["name"]) not in done]
            all_rows[fname] = rows
            if not todo:
                continue
            new_file = not csv_path.exists()
            with open(csv_path, "a", newline="") as f, Progress() as prog:
                w = csv.DictWriter(f, todo[0][1])
                if new_file:
                    w.writeheader()
                task = prog.add_task(fname.split(".")[0].upper() + " runs", total=len(todo))
                fn = todo[0][0]
                for _, r in ex.map_unordered(fn, [j[2] for j in todo]):
                    w.writerow(r)
                    f.flush()
                    rows.append({k: str(v) for k, v in r.items()})
                    prog.advance(task)
    plots(out, all_rows["ptq.csv"], all_rows["qat.csv"])
    print(f"{sum(len(r) for r in all_rows.values())} rows in {out}/ptq.csv, qat.csv; plots in {out}")


if __name__ == "__main__":
    main()
