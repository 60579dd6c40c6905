"""Mixed-precision search: the per-component bit allocation with the least memory above an accuracy floor.

Greedy descent on the memory of :func:`intssm.integer.cost.memory`. From a start configuration, each round
lowers one group of components by one rung of ``LADDER`` (16 14 12 10 8 7 6 5 4 3 2); every
candidate is quantized (ranges calibrated once: they do not depend on the bit widths), optionally
fine-tuned by a few QAT steps, and scored by the integer simulator on validation sequences. The
round keeps the candidate that saves the most bytes per point of accuracy lost among those that
stay at or above the floor; the search stops when none does. Every scored configuration is kept,
and the Pareto front (fewest bytes for the accuracy) is drawn from all of them.

Candidates of a round are independent: they run through :mod:`intssm.executor`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from intssm.errors import IntssmError
from intssm.outputs import write_png, write_text
from intssm.datapath.qspec import QuantConfig

LADDER = (16, 14, 12, 10, 8, 7, 6, 5, 4, 3, 2)
GROUPS = {  # components lowered together (real and imaginary parts of Abar and of x stay paired)
    "Abar": ("A_re", "A_im"), "x": ("x_re", "x_im"), "B": ("B",), "C": ("C",), "D": ("D",),
    "enc_w": ("enc_w",), "mix_w": ("mix_w",), "dec_w": ("dec_w",), "h": ("h",), "y": ("y",),
    "act": ("act",), "glu": ("glu",), "sig": ("sig",), "pool": ("pool",),
}


def lower(q: QuantConfig, group: str) -> QuantConfig | None:
    """``q`` with ``group`` one rung down the ladder (None at the bottom)."""
    names = GROUPS[group]
    b = max(getattr(q, n).bits for n in names)
    nxt = [r for r in LADDER if r < b]
    if not nxt:
        return None
    return q.with_bits(**{n: nxt[0] for n in names})


def signature(q: QuantConfig) -> str:
    return " ".join(f"{g}={max(getattr(q, n).bits for n in ns)}" for g, ns in GROUPS.items())


@lru_cache(maxsize=4)
def _split(seq: str, split: str, n: int | None, val_fraction: float | None = None):
    from intssm import data

    return data.load(seq, split, n, val_fraction)


QAT_LR = 3e-5  # fine-tuning a candidate: 20 steps at 1e-4 already cost 2 points on w8a8-state12, 3e-5 gains 1.4


def score(ckpt: str, seq: str, qcfg: dict, ranges: dict, val_limit: int | None, qat_steps: int = 0, seed: int = 0,
          split: str = "val", qat_lr: float = QAT_LR, val_fraction: float | None = None) -> dict:
    """Integer accuracy on ``split`` (first ``val_limit`` sequences) and memory of one configuration,
    after ``qat_steps`` discrete-Abar QAT steps (batch 64, AdamW at ``qat_lr``) when > 0."""
    import numpy as np
    import torch

    from intssm import data
    from intssm.training import checkpoint
    from intssm.integer import cost
    from intssm.integer.export import from_quantized
    from intssm.training.qat import configure, qat_step
    from intssm.training.qmodel import QuantS4D
    from intssm.datapath.build import build_datapath
    from intssm.datapath.ranges import ranges_from_json
    from intssm.integer.sim import simulate

    q = QuantConfig.from_dict(qcfg)
    model, ck = checkpoint.load(ckpt)
    model = model.double()
    va = _split(seq, split, val_limit, val_fraction)
    if not len(va):
        raise IntssmError(f"{seq}: the {split} split is empty (trained with --val-fraction 0?); "
                          "search scores candidates on validation sequences: give --val-fraction > 0")
    L = va.x.shape[1]
    from intssm.datapath.inputq import from_entry

    iq = from_entry(ck.get("input_quant"), model.cfg.d_input)  # float data: the model was folded to read its codes
    mem = cost.memory(model.cfg, q, L)
    out = {"config": qcfg, "n": len(va), "bytes": mem["bytes"], "weights_bytes": mem["weights_bytes"], "reduction": mem["reduction"]}
    try:
        qm = QuantS4D(model, build_datapath(model.cfg, q, ranges_from_json(ranges), L), iq)
    except IntssmError as e:
        return out | {"accuracy": None, "error": str(e)}
    if qat_steps:
        torch.manual_seed(seed)
        tr = data.load(seq, "train", 64 * qat_steps, val_fraction)
        Ptr = qm.input_codes(tr.x, tr.lengths)
        params = configure(qm, "discrete")
        opt = torch.optim.AdamW(params, lr=qat_lr, weight_decay=0.0)
        for i in range(qat_steps):
            b = slice(64 * i, 64 * (i + 1))
            qat_step(qm, opt, params, Ptr[b], tr.y[b], lengths=tr.lengths[b])
    lg, cnt, _ = simulate(from_quantized(qm), qm.input_codes(va.x, va.lengths), lengths=va.lengths)
    return out | {"accuracy": float((lg.argmax(1) == va.y).mean()), "saturations": int(np.sum(cnt))}


def pareto(points: list[dict]) -> list[dict]:
    """Points not dominated in (fewer bytes, higher accuracy), sorted by bytes."""
    pts = sorted((p for p in points if p.get("accuracy") is not None), key=lambda p: (p["bytes"], -p["accuracy"]))
    front, best = [], -1.0
    for p in pts:
        if p["accuracy"] > best:
            front.append(p)
            best = p["accuracy"]
    return front


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during :func:`greedy`: carries (chosen config or None, points, trace) so far."""

    def __init__(self, chosen, points, trace):
        super().__init__("search interrupted")
        self.result = (chosen, points, trace)


def greedy(ckpt: str, seq: str, start: QuantConfig, ranges: dict, floor: float, executor, val_limit: int = 2000,
           qat_steps: int = 0, groups=tuple(GROUPS), max_rounds: int = 60, on_round=None, qat_lr: float = QAT_LR,
           val_fraction: float | None = None):
    """Greedy search from ``start``; returns (chosen config dict or None, all scored points, trace).
    An interrupt raises :class:`SearchInterrupted` with the same three as they stood: the last
    accepted configuration (it met the floor), every point scored so far, the path."""
    common = dict(ckpt=ckpt, seq=seq, ranges=ranges, val_limit=val_limit, qat_steps=qat_steps, qat_lr=qat_lr,
                  val_fraction=val_fraction)
    seen: dict[str, dict] = {}
    points: list[dict] = []

    def run(cands: dict[str, QuantConfig]) -> dict[str, dict]:
        todo = {k: q for k, q in cands.items() if signature(q) not in seen}
        keys = list(todo)
        for i, r in executor.map_unordered(score, [common | {"qcfg": todo[k].to_dict()} for k in keys]):
            r["signature"] = signature(todo[keys[i]])
            r["move"] = keys[i]
            seen[r["signature"]] = r
            points.append(r)
        return {k: seen[signature(q)] for k, q in cands.items()}


    trace: list[dict] = []
    try:
        return _greedy(run, points, start, floor, groups, max_rounds, on_round, trace)
    except KeyboardInterrupt:
        ok = trace and trace[-1]["accuracy"] is not None and trace[-1]["accuracy"] >= floor
        raise SearchInterrupted(trace[-1]["config"] if ok else None, points, trace) from None


def _greedy(run, points, start, floor, groups, max_rounds, on_round, trace):
    cur = run({"start": start})["start"]
    trace.append(cur)
    if cur["accuracy"] is None or cur["accuracy"] < floor:
        return None, points, trace
    q = start
    for _ in range(max_rounds):
        cands = {g: c for g in groups if (c := lower(q, g)) is not None}
        if not cands:
            break
        res = run(cands)
        ok = {g: r for g, r in res.items() if r["accuracy"] is not None and r["accuracy"] >= floor and r["bytes"] < cur["bytes"]}
        if not ok:
            break
        # most bytes saved per point of accuracy lost (gains count as a tiny loss)
        g = max(ok, key=lambda g: (cur["bytes"] - ok[g]["bytes"]) / max(1e-4, cur["accuracy"] - ok[g]["accuracy"]))
        q, cur = cands[g], ok[g]
        trace.append(cur | {"move": g})
        if on_round:
            on_round(cur)
    return cur["config"], points, trace


def plot(points: list[dict], trace: list[dict], floor: float, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [p for p in points if p.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p["bytes"] for p in ok], [100 * p["accuracy"] for p in ok], s=10, alpha=0.5, label="scored configurations")
    fr = pareto(ok)
    ax.plot([p["bytes"] for p in fr], [100 * p["accuracy"] for p in fr], "r-o", ms=3, label="Pareto front")
    ax.plot([p["bytes"] for p in trace], [100 * p["accuracy"] for p in trace], "k:", lw=1, label="greedy path")
    ax.axhline(100 * floor, color="gray", ls="--", lw=1, label=f"floor {100 * floor:.1f}%")
    ax.set_xscale("log")
    ax.set_xlabel("memory: flash + RAM (bytes)")
    ax.set_ylabel("integer validation accuracy (%)")
    ax.set_title("intssm search: mixed precision")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    write_png(path, fig, quiet=True)


def write(out, points, trace, chosen):
    """points.jsonl, front.json, trace.json and best.json (a config ``intssm ptq --config`` accepts) in ``out``."""
    write_text(out / "points.jsonl", "".join(json.dumps(p) + "\n" for p in points), quiet=True)
    write_text(out / "front.json", json.dumps([{k: p[k] for k in ("signature", "bytes", "accuracy")} for p in pareto(points)], indent=1), quiet=True)
    write_text(out / "trace.json", json.dumps([{k: p.get(k) for k in ("move", "signature", "bytes", "accuracy")} for p in trace], indent=1), quiet=True)
    if chosen is not None:
        write_text(out / "best.json", json.dumps(chosen, indent=1), quiet=True)


#: what :func:`run` writes in its output folder
FILES = ("points.jsonl", "front.json", "trace.json", "best.json", "pareto.png", "equalized-fp32.pt", "input-folded-fp32.pt")


@dataclass
class SearchOptions:
    """What ``intssm search`` takes."""

    ckpt: Path  # the float checkpoint
    out: Path = Path("runs/search")  # folder for FILES
    min_accuracy: float = 0.97  # floor on integer validation accuracy (0..1)
    start: str = "w8a8-state12"  # start configuration: preset or JSON file (min/max range policies)
    val_limit: int = 2000  # validation sequences scoring each candidate
    calib: int = 256  # calibration sequences (ranges are calibrated once)
    qat_steps: int = 0  # discrete-Abar QAT steps (batch 64) fine-tuning each candidate before scoring
    qat_lr: float = QAT_LR
    groups: tuple = tuple(GROUPS)  # groups to lower
    workers: int = 2  # parallel candidates
    executor: str = "local"  # local | ray
    ray_address: str | None = None
    test: bool = True  # also score the chosen configuration on the full test set
    equalize: float = 0.0  # state equalization strength (intssm.training.equalize)
    val_fraction: float | None = None  # None: the checkpoint's


def check_options(o: SearchOptions) -> None:
    """Refuse options outside their ranges (messages name the CLI options)."""
    from intssm.outputs import check_dir

    if not 0 < o.min_accuracy <= 1:
        raise IntssmError(f"--min-accuracy must be in (0, 1], got {o.min_accuracy}")
    if o.val_limit < 1 or o.calib < 1 or o.qat_steps < 0 or o.workers < 1 or o.qat_lr <= 0:
        raise IntssmError("--val-limit, --calib, --workers and --qat-lr must be positive, --qat-steps >= 0")
    from intssm.training.equalize import check_strength

    check_strength(o.equalize, "--equalize")
    check_dir(o.out, inputs=[o.ckpt, o.start], what="--out", writes=FILES)
    bad = [g for g in o.groups if g not in GROUPS]
    if bad:
        raise IntssmError(f"unknown group(s) {bad}; choose from {', '.join(GROUPS)}")


def _candidates_checkpoint(o: SearchOptions, qm0, ck: dict, seq: str) -> Path:
    """The float checkpoint every candidate quantizes: the given one, or -- written into ``o.out``
    -- the equalized model (``equalize`` > 0) or the model folded to read the input codes (float data)."""
    from intssm.training import checkpoint

    iq = qm0.iq.to_dict()
    if o.equalize:
        path = o.out / "equalized-fp32.pt"
        checkpoint.save(path, qm0.model, **checkpoint.extras(ck), equalized={"alpha": o.equalize, "calib": o.calib, "seq": seq},
                        input_quant=iq)
        return path
    if qm0.iq.float_data:
        path = o.out / "input-folded-fp32.pt"
        checkpoint.save(path, qm0.model, **checkpoint.extras(ck), input_quant=iq)
        return path
    return o.ckpt


def run(o: SearchOptions, on_round=None) -> dict:
    """The search as ``intssm search`` runs it: ranges calibrated once (:func:`intssm.training.ptq.ptq_dataset`,
    equalization included), :func:`greedy` from ``o.start`` through the executor, the results
    written in ``o.out`` (:func:`write`, :func:`plot`), and with ``o.test`` the chosen configuration
    scored on the test split after the choice. Returns the summary; an interrupt writes what was
    scored and raises :class:`intssm.errors.Interrupted`."""
    from intssm import data
    from intssm.datapath.qspec import get_config
    from intssm.datapath.ranges import ranges_to_json
    from intssm.errors import Interrupted
    from intssm.executor import get_executor
    from intssm.training import checkpoint
    from intssm.training.ptq import ptq_dataset

    check_options(o)
    q0 = get_config(o.start)
    if q0.policies() != {"minmax"}:
        raise IntssmError("search calibrates min/max ranges once for all candidates; give a start config whose range policies are all 'minmax'")
    model, ck = checkpoint.load(o.ckpt)
    if "qspec" in ck:
        raise IntssmError(f"{o.ckpt} is already quantized; give the float checkpoint")
    seq = checkpoint.dataset_seq(ck)
    vfrac = o.val_fraction if o.val_fraction is not None else checkpoint.val_fraction(ck)
    if seq not in data.SEQS and not len(data.load(seq, "val", None, vfrac)):
        raise IntssmError(f"{o.ckpt} was trained without a validation split (--val-fraction 0) and search scores "
                          "candidates on validation sequences: give --val-fraction > 0 (those sequences were seen in training)")
    cal = data.load(seq, "train", o.calib, vfrac)
    qm0, ranges = ptq_dataset(model, q0, cal, o.equalize)  # ranges do not depend on bits: calibrated once
    ranges = ranges_to_json(ranges)
    ckpt = _candidates_checkpoint(o, qm0, ck, seq)
    t0 = time.time()
    with get_executor(o.executor, o.workers, o.ray_address) as ex:
        try:
            chosen, points, trace = greedy(str(ckpt), seq, q0, ranges, o.min_accuracy, ex, o.val_limit, o.qat_steps, o.groups,
                                           qat_lr=o.qat_lr, val_fraction=vfrac, on_round=on_round)
        except SearchInterrupted as e:
            chosen, points, trace = e.result
            write(o.out, points, trace, chosen)
            kept = f"best.json holds the last accepted configuration ({trace[-1]['bytes']:.0f} B)" if chosen else "no configuration met the floor yet"
            raise Interrupted(f"interrupted: {len(points)} scored configurations written to {o.out}; {kept}") from None
        res = {"floor": o.min_accuracy, "start": o.start, "equalize": o.equalize, "scored": len(points),
               "seconds": round(time.time() - t0, 1),
               "front": [{k: p[k] for k in ("signature", "bytes", "accuracy")} for p in pareto(points)]}
        if chosen is None:
            write(o.out, points, trace, None)
            raise IntssmError(f"the start configuration {o.start!r} scores {trace[0]['accuracy']} on validation, already "
                              f"below the floor --min-accuracy {o.min_accuracy}; lower --min-accuracy or start wider")
        best = trace[-1]
        res |= {"best": {k: best[k] for k in ("signature", "bytes", "weights_bytes", "reduction", "accuracy")},
                "best_config": str(o.out / "best.json")}
        if o.equalize:  # the config was chosen for the equalized model: PTQ must equalize the same way
            res["ptq_command"] = (f"intssm ptq {o.ckpt} --config {o.out / 'best.json'} --equalize {o.equalize} "
                                  f"--calib {o.calib} -o q.pt")
            res["equalized_checkpoint"] = str(ckpt)
        if o.test:
            r = next(ex.map_unordered(score, [dict(ckpt=str(ckpt), seq=seq, qcfg=chosen, ranges=ranges, val_limit=None,
                                                   qat_steps=o.qat_steps, qat_lr=o.qat_lr, split="test", val_fraction=vfrac)]))[1]
            res["best"]["test_accuracy"] = r["accuracy"]
            res["best"]["n_test"] = r["n"]
    write(o.out, points, trace, chosen)
    plot(points, trace, o.min_accuracy, o.out / "pareto.png")
    return res
