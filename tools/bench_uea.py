"""`intssm fit` with its defaults on the shipped UEA/UCR datasets, beside the time-series field's
baselines from aeon (1-NN DTW and MiniRocket), in one run.

    python tools/bench_uea.py --baseline-python /work/venv-bench/bin/python [--max-minutes 15] [--datasets A,B] [--out runs/bench_uea]

For each dataset: `intssm fit --seq data/uea/NAME -o OUT/NAME --max-minutes M` (in this Python),
then, in ``--baseline-python`` (a Python with ``aeon==1.6.0``: ``pip install "intssm[bench]"``, or a
separate venv where aeon's numpy/numba pins would clash with intssm's), aeon's
``KNeighborsTimeSeriesClassifier(distance="dtw")`` and ``MiniRocketClassifier(random_state=0)``
trained on TRAIN and scored on TEST (unequal-length data are padded with zeros to the longest
sequence for MiniRocket, which needs equal lengths; 1-NN DTW takes them as they are).

Printed per dataset: test accuracy, bytes on a microcontroller and seconds of each. intssm: the
integer model's deployed bytes (C constants + state, ``intssm export-c``); 1-NN: the training set it
must store (float32 values + one byte per label); MiniRocket: its fitted parameters (dilations,
features per dilation, biases, channel choices and the 84 kernels' indices) and the scaler and ridge
classifier's weights, as float32 / int32. ``--json`` writes every number to OUT/bench.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ("BasicMotions", "JapaneseVowels", "ArrowHead", "ItalyPowerDemand", "OSULeaf")


def baselines(path: str) -> dict:
    """Runs in the baseline Python (aeon only): both baselines on one dataset directory."""
    import numpy as np
    from aeon.classification.convolution_based import MiniRocketClassifier
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier
    from aeon.datasets import load_from_ts_file

    name = Path(path).name
    Xtr, ytr = load_from_ts_file(f"{path}/{name}_TRAIN.ts")
    Xte, yte = load_from_ts_file(f"{path}/{name}_TEST.ts")
    unequal = isinstance(Xtr, list)
    out = {}
    t = time.time()
    knn = KNeighborsTimeSeriesClassifier(distance="dtw").fit(Xtr, ytr)
    acc = float((knn.predict(Xte) == yte).mean())
    values = sum(x.size for x in Xtr) if unequal else Xtr.size
    out["1nn_dtw"] = {"accuracy": acc, "seconds": round(time.time() - t, 1), "bytes": int(4 * values + len(ytr)),
                      "bytes_what": "training set: float32 values + 1 byte per label"}
    t = time.time()
    if unequal:  # MiniRocket needs equal lengths: zeros after each sequence, up to the longest of both splits
        from aeon.transformations.collection.unequal_length import Padder

        L = max(x.shape[1] for x in list(Xtr) + list(Xte))
        pad = Padder(padded_length=L, fill_value=0)
        Xtr, Xte = pad.fit_transform(Xtr), pad.transform(Xte)
    mr = MiniRocketClassifier(random_state=0).fit(Xtr, ytr)
    acc = float((mr.predict(Xte) == yte).mean())
    tr, sc, ridge = mr.pipeline_.steps[0][1], mr.pipeline_.steps[1][1], mr.pipeline_.steps[2][1]
    n_par = sum(int(np.asarray(a).size) for a in tr.parameters)  # int32 / float32 arrays: 4 bytes each
    n_w = int(sc.scale_.size + ridge.coef_.size + np.asarray(ridge.intercept_).size)
    out["minirocket"] = {"accuracy": acc, "seconds": round(time.time() - t, 1), "padded": unequal,
                         "bytes": int(4 * (n_par + n_w) + tr._indices.size),
                         "bytes_what": "transform parameters (int32/float32), kernel indices (uint8), scaler + ridge weights (float32)"}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-python", default=sys.executable, help="A Python with aeon==1.6.0 installed.")
    ap.add_argument("--max-minutes", type=float, default=15.0, help="intssm fit --max-minutes per dataset.")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--out", default="runs/bench_uea")
    ap.add_argument("--baseline-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.baseline_worker:
        print(json.dumps(baselines(a.baseline_worker)))
        return
    out = Path(a.out)
    rows = []
    for name in a.datasets.split(","):
        ds = ROOT / "data" / "uea" / name
        t = time.time()
        r = subprocess.run([sys.executable, "-m", "intssm", "fit", "--seq", str(ds), "-o", str(out / name),
                            "--max-minutes", str(a.max_minutes), "--json"], capture_output=True, text=True, cwd=ROOT)
        if r.returncode:
            sys.exit(f"intssm fit on {name} failed:\n{r.stderr[-2000:]}")
        card = json.loads(r.stdout)["card"]
        fit_s = time.time() - t
        b = subprocess.run([a.baseline_python, __file__, "--baseline-worker", str(ds)], capture_output=True, text=True)
        if b.returncode:
            sys.exit(f"baselines on {name} failed (is aeon==1.6.0 installed in {a.baseline_python}?):\n{b.stderr[-2000:]}")
        base = json.loads(b.stdout.strip().splitlines()[-1])
        v = card["stages"]["verify"]
        res = v["results"]["test"]
        row = {"dataset": name, "n_train": card["dataset"]["n_train"], "n_test": res["n"],
               "intssm": {"accuracy": res["int_acc"], "float_accuracy": res["float_acc"], "bit_exact": res["bit_exact"],
                          "bytes": v["memory"]["deployed_bytes"], "config": v["memory"]["config"],
                          "model": card["stages"]["select"]["chosen"], "seconds": round(fit_s, 1),
                          "goal_met": card["stages"]["quantize"]["goal_met"]}} | base
        rows.append(row)
        i, d, m = row["intssm"], row["1nn_dtw"], row["minirocket"]
        print(f"{name:17s} intssm {100 * i['accuracy']:6.2f}% {i['bytes']:>7,} B {i['seconds']:6.0f} s "
              f"(bit-exact {i['bit_exact']}/{res['n']})  |  1-NN DTW {100 * d['accuracy']:6.2f}% {d['bytes']:>9,} B {d['seconds']:5.0f} s  |  "
              f"MiniRocket {100 * m['accuracy']:6.2f}% {m['bytes']:>9,} B {m['seconds']:5.0f} s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"max_minutes": a.max_minutes, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out / 'bench.json'}")


if __name__ == "__main__":
    main()
