"""Why QAT collapses on long sequences with rare large values, and what holds: one float model,
several quantization starts (range policies, state rounding), each measured at the QAT start
(PTQ) and after a short QAT run, on the training and test sequences.

    python tools/qat_long_study.py runs/acsf1-fp32.pt                     # ACSF1 (1,460 steps), every row
    python tools/qat_long_study.py data/checkpoints/paper-small-fp32.pt --limit 2000 --test-limit 2000   # sMNIST's 784 steps, a subset
    python tools/qat_long_study.py M.pt --rows minmax,calibrated          # a few rows
    python tools/qat_long_study.py M.pt --rows minmax --calib 25 --csv '' --png ''   # a smaller calibration set

Per row: the integer model's cross-entropy and accuracy at the QAT start on the calibration
(training) sequences beside the float model's, the saturation counts per site, the slow modes'
statistics (the share of modes whose round-to-nearest dead zone, 0.5 / (1 - |Abar_q|) codes, is
over a tenth of the state's range), then frozen-Abar QAT (``--epochs``, batch ``--batch-size``, lr
1e-3: the documented recipe) and the integer accuracy on the training and test sequences with the
saturation count of the state. The test split only reports; no row is chosen on it. Writes
``--csv`` and ``--png`` (default docs/qat_long_study.{csv,png}).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from intssm import data  # noqa: E402
from intssm.datapath.qspec import get_config  # noqa: E402
from intssm.integer.export import from_quantized  # noqa: E402
from intssm.integer.sim import simulate  # noqa: E402
from intssm.training import checkpoint  # noqa: E402
from intssm.training.qat import Diverged, QATArgs, Start, restore, train  # noqa: E402
from intssm.training.start import calibrated_start, start_quality  # noqa: E402
from intssm.training.ptq import ptq_dataset  # noqa: E402
from intssm.integer.score import int_accuracy  # noqa: E402

ACTS = ("h", "y", "glu")  # the activation sites whose range a rare large input sets


def _acts(cfg, policy):
    return {n: replace(getattr(cfg, n), range=policy) for n in ACTS}


def rows(base):
    """name -> what the start changes (a QuantConfig; ``calibrated``: the range policy chosen on the
    training sequences, :func:`intssm.training.qat.calibrated_start`)."""
    return {
        "minmax": base,
        "input p99.9": replace(base, input_range="p99.9"),
        "activations p99.9": replace(base, **_acts(base, "p99.9")),
        "activations mse": replace(base, **_acts(base, "mse")),
        "state dither": replace(base, state_rounding="dither"),
        "state x2 headroom": replace(base, state_clip=2.0),
        "input and activations p99.9": replace(base, input_range="p99.9", **_acts(base, "p99.9")),
        "calibrated": "calibrated",
    }


def counts(qm, ds):
    P = qm.input_codes(ds.x, ds.lengths)
    lg, cnt, _ = simulate(from_quantized(qm), P, lengths=ds.lengths)
    sat = {k: int(v) for k, v in zip(qm.counters, cnt.sum(0)) if v}
    return float((lg.argmax(1) == ds.y).mean()), sat


def state_sat(sat):
    return sum(v for k, v in sat.items() if k.split(".")[-1] in ("x_re", "x_im"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", help="float checkpoint (its dataset and validation fraction are used)")
    ap.add_argument("--config", default="hetero-3b-x10")
    ap.add_argument("--limit", type=int, default=None, help="training sequences (calibration and QAT); default all")
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--calib", type=int, default=None, help="calibrate on the first N training sequences (default: all of --limit)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    ap.add_argument("--csv", default=str(ROOT / "docs" / "qat_long_study.csv"))
    ap.add_argument("--png", default=str(ROOT / "docs" / "qat_long_study.png"))
    ap.add_argument("--max-minutes", type=float, default=0.0, help="QAT time budget per row (0 = none)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, ck = checkpoint.load(a.ckpt)
    model = model.double()
    seq, vf = checkpoint.dataset_seq(ck), checkpoint.val_fraction(ck)
    tr = data.load(seq, "train", a.limit, vf)
    te = data.load(seq, "test", a.test_limit)
    cal = tr if a.calib is None else data.load(seq, "train", a.calib, vf)
    base = get_config(a.config)
    todo = rows(base)
    if a.rows:
        todo = {k: todo[k] for k in a.rows.split(",")}
    out = []
    print(f"{seq}: {len(tr)} training ({len(cal)} calibrating) / {len(te)} test sequences of up to {tr.x.shape[1]} steps; config {a.config}; "
          f"QAT {a.epochs} epochs, batch {a.batch_size}", flush=True)
    for name, q in todo.items():
        t0 = time.time()
        m = copy.deepcopy(model)  # QAT trains the float weights in place: every row starts from the same ones
        if q == "calibrated":
            qm, ranges, how, _ = calibrated_start(m, base, cal)
            name = f"calibrated ({how})"
        else:
            qm, ranges = ptq_dataset(m, q, cal)
        sq = start_quality(qm, tr)
        P = qm.input_codes(tr.x, tr.lengths)
        start_acc, start_sat = counts(qm, tr)
        start_test_acc, _ = counts(qm, te)
        st = Start(qm, ranges, name, ck, seq, vf)
        args = QATArgs(epochs=a.epochs, batch_size=a.batch_size, val_fraction=vf, max_minutes=a.max_minutes, limit=a.limit)
        try:
            best, hist, _ = train(st.qm, seq, args, int_accuracy)
        except Diverged as e:  # the best finished epoch (at worst the start) stands
            best, hist = e.best, e.history
            name += " (diverged)"
        restore(st.qm, best)
        tr_acc, tr_sat = counts(st.qm, tr)
        te_acc, te_sat = counts(st.qm, te)
        r = {"row": name, "float_loss": sq["float_loss"], "start_loss": sq["int_loss"], "float_acc": sq["float_acc"],
             "start_acc": start_acc, "start_test_acc": start_test_acc, "start_state_sat": state_sat(start_sat), "start_sat": json.dumps(start_sat),
             "slow_modes": sq["dead_zone_share"], "qat_first_loss": hist[1]["train_loss"] if len(hist) > 1 else None,
             "train_acc": tr_acc, "test_acc": te_acc, "train_state_sat": state_sat(tr_sat), "test_state_sat": state_sat(te_sat),
             "seconds": round(time.time() - t0, 1)}
        out.append(r)
        print(f"{name:42s} start: loss {r['start_loss']:7.3f} (float {r['float_loss']:.3f}) acc {start_acc:.3f} "
              f"(float {r['float_acc']:.3f}), test {start_test_acc:.3f}, state sat {r['start_state_sat']:>8,} | QAT: train {tr_acc:.3f} test {te_acc:.3f} "
              f"state sat train {r['train_state_sat']:,} test {r['test_state_sat']:,} ({r['seconds']:.0f} s)", flush=True)
        del P
    if a.csv:
        from intssm.outputs import atomic

        with atomic(a.csv) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(out[0]))
            w.writeheader()
            w.writerows(out)
    if a.png:
        _plot(out, a.png, f"{Path(seq).name}, {a.config}")


def _plot(out, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from intssm.outputs import write_png

    names = [r["row"] for r in out]
    y = np.arange(len(out))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 0.45 * len(out) + 1.6), sharey=True)
    ax1.barh(y - 0.2, [r["start_loss"] for r in out], 0.4, label="integer, QAT start")
    ax1.axvline(out[0]["float_loss"], color="gray", ls="--", label="float")
    ax1.set_xscale("log")
    ax1.set_xlabel("cross-entropy on the training sequences")
    ax1.legend(fontsize=7)
    ax2.barh(y - 0.2, [100 * r["train_acc"] for r in out], 0.4, label="after QAT, training sequences")
    ax2.barh(y + 0.2, [100 * r["test_acc"] for r in out], 0.4, label="after QAT, test")
    ax2.axvline(100 * out[0]["float_acc"], color="gray", ls="--", label="float (training sequences)")
    ax2.set_xlabel("integer accuracy (%)")
    ax2.legend(fontsize=7)
    ax1.set_yticks(y, names, fontsize=8)
    ax1.invert_yaxis()
    fig.suptitle(title, fontsize=9)
    write_png(path, fig)


if __name__ == "__main__":
    main()
