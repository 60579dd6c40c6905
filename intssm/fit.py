"""``intssm fit``: from a dataset to a small, verified integer model, with no per-dataset flags.

Five stages, each reported as it runs, all inside one time budget (``max_minutes``):

1. **select** -- a small grid of float models (width, depth, dropout: :data:`CANDIDATES`) is
   trained on a step budget (:func:`intssm.training.train.train_steps`: warm-up, cosine decay,
   early stopping) with per-channel input standardisation, and scored on validation sequences:
   stratified k-fold cross-validation over the training sequences when there are fewer than
   :data:`CV_BELOW` of them, else the dataset's validation split. The runs go through
   :mod:`intssm.executor` (local processes or Ray). The smallest candidate within one standard
   error of the best mean validation accuracy wins (:func:`one_se_choice`), with the step count at
   which its mean validation curve peaked.
2. **float** -- the winner is trained once more: on all training sequences with a schedule of that
   many steps, annealed to 0 at its end (cross-validation), or kept from its validation run
   (validation split). The standardisation is folded
   into the encoder (:func:`intssm.training.train.fold_standardisation`), so the float checkpoint
   reads the raw data and the input quantizer calibrates on them as for any model.
3. **quantize** -- quantization presets from the smallest up (:data:`LADDER`): PTQ, then frozen-Abar
   QAT (:func:`intssm.training.qat.train`, scored by :func:`intssm.integer.score.int_accuracy`; PTQ alone where ``qat_steps`` is 0), the better of the
   two on the selection sequences kept; the first whose integer
   accuracy on the selection sequences is within ``max_drop`` points of the float model's, and
   whose deployed bytes fit ``budget_bytes``, is kept. With cross-validation the selection sequences
   are the training sequences (every one was seen in training: they measure what quantization loses,
   not how the model generalises); with a validation split, the validation sequences.
4. **verify** -- the integer simulator against the Torch quantized model on every selection and test
   sequence (``==`` on the integer logits), the integer artifact (``model.npz``), the C export
   (``c/``) and, with ``target`` = ``cortex-m4``, the emulated microcontroller.
5. **report** -- ``card.json`` and ``card.md`` (every choice with its validation score, float and
   integer accuracy on validation and test, bytes, operations per step, bit-exact counts) and
   ``front.png`` (integer accuracy against deployed bytes).

The test split is read in stage 4 only, after every choice is made: no choice can depend on it
(``tests/commands/test_fit.py`` poisons the test labels and demands identical choices).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from intssm.errors import IntssmError
from intssm.training.recipe import step_batch_size as batch_size  # the step schedule's batch: n/8 within [8, 64]

CV_BELOW = 1000  # fewer training sequences than this: k-fold cross-validation, else the validation split
#: the float models tried (each on top of the paper-small preset: d_state 64)
CANDIDATES = (
    {"d_model": 16, "n_layers": 1, "dropout": 0.1},
    {"d_model": 32, "n_layers": 1, "dropout": 0.1},
    {"d_model": 16, "n_layers": 2, "dropout": 0.1},
)
#: quantization presets tried, smallest first (intssm configs)
LADDER = ("hetero-3b-x10", "hetero-x10", "w8a8-state12", "w16a16")
STAGE_SHARE = {"select": 0.45, "float": 0.12, "quantize": 0.33}  # of max_minutes; verification gets the rest


@dataclass
class FitOptions:
    max_minutes: float = 15.0  # the whole run; every stage gets its share (STAGE_SHARE)
    budget_bytes: int | None = None  # deployed bytes (C constants + state) the integer model must fit
    max_drop: float = 1.0  # points of accuracy the integer model may lose against the float one (selection sequences)
    steps: int = 1000  # optimizer steps of each float run's schedule
    folds: int = 3  # cross-validation folds (small data)
    qat_steps: int = 300  # optimizer steps of QAT per quantization candidate (batch 16)
    workers: int = 1  # parallel float runs (1: in this process)
    executor: str = "local"  # local | ray
    ray_address: str | None = None
    seed: int = 0
    target: str = "host"  # host | cortex-m4 | cortex-m3
    resume: bool = False  # reuse the stages an earlier (interrupted) run into the same folder completed
    candidates: list = field(default_factory=lambda: [dict(c) for c in CANDIDATES])
    ladder: list = field(default_factory=lambda: list(LADDER))


def check_options(o: FitOptions) -> None:
    """Refuse options outside their ranges before any work (messages name the CLI options)."""
    if not (math.isfinite(o.max_minutes) and o.max_minutes > 0):
        raise IntssmError(f"--max-minutes must be a positive number, got {o.max_minutes}")
    if not (math.isfinite(o.max_drop) and 0 <= o.max_drop <= 100):
        raise IntssmError(f"--max-drop must be in [0, 100] points, got {o.max_drop}")
    if o.budget_bytes is not None and o.budget_bytes < 1:
        raise IntssmError(f"--budget-bytes must be positive, got {o.budget_bytes}")
    if o.steps < 1 or o.qat_steps < 0 or o.workers < 1 or not 2 <= o.folds <= 20:
        raise IntssmError("--steps and --workers must be positive, --qat-steps >= 0, --folds in 2..20")
    if o.target not in ("host", "cortex-m4", "cortex-m3"):  # the cores with a cycle estimate, which the card reports
        raise IntssmError(f"--target must be host, cortex-m4 or cortex-m3, got {o.target!r}")


def kfold(y: np.ndarray, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold: per class, a seeded permutation dealt round-robin into ``k`` folds;
    returns (train indices, validation indices) per fold, each sorted."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), np.int64)
    start = 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold_of[idx] = (np.arange(len(idx)) + start) % k
        start += len(idx)  # the next class continues where this one ended: fold sizes stay even
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(k)]




def model_config(seq: str, cand: dict):
    from dataclasses import replace

    from intssm import data
    from intssm.training.model import PRESETS

    info = data.info(seq)
    pool = "last" if info.varlen else "mean"
    return replace(PRESETS["paper-small"], d_input=info.d_input, d_output=info.n_classes, pool=pool, **cand)


def _split_arrays(seq: str, cv: bool, fold: int, folds: int, seed: int):
    """(x, y, lengths) of the run's training and validation sequences (float)."""
    from intssm import data

    if cv:
        tr = data.load(seq, "train", None, 0.0)
        ti, vi = kfold(tr.y, folds, seed)[fold]
        x = tr.as_float()
        return (x[ti], tr.y[ti], tr.lengths[ti]), (x[vi], tr.y[vi], tr.lengths[vi])
    tr, va = data.load(seq, "train"), data.load(seq, "val")
    return (tr.as_float(), tr.y, tr.lengths), (va.as_float(), va.y, va.lengths)


def float_run(seq: str, cand: dict, fold: int, folds: int, cv: bool, steps: int, seed: int, seconds: float,
              stop_at: int | None = None, keep: bool = False) -> dict:
    """One float run (module level: the executor pickles it): candidate ``cand`` on fold ``fold``
    (``cv``) or the validation split, ``fold`` -1 = all training sequences up to ``stop_at``.
    Returns its curve and, with ``keep``, the kept weights with the standardisation folded in."""
    import torch

    from intssm import data
    from intssm.training.model import S4DModel
    from intssm.training.train import StepArgs, fold_standardisation, standardisation, train_steps

    torch.set_num_threads(1)
    t0 = time.time()
    if fold < 0:
        tr = data.load(seq, "train", None, 0.0)
        (x, y, lens), val = (tr.as_float(), tr.y, tr.lengths), None
    else:
        (x, y, lens), val = _split_arrays(seq, cv, fold, folds, seed)
    mu, sd = standardisation(x, lens)
    norm = lambda a: ((a - mu) / sd).astype(np.float32)  # noqa: E731
    model = S4DModel(model_config(seq, cand), seed=seed)
    args = StepArgs(steps=steps, batch_size=batch_size(len(y)), eval_every=max(10, steps // 20), stop_at=stop_at,
                    seconds=seconds, seed=seed)
    best, curve, why = train_steps(model, norm(x), y, lens, args, None if val is None else (norm(val[0]), val[1], val[2]))
    out = {"cand": cand, "fold": fold, "curve": curve, "ended": why, "seconds": time.time() - t0, "n_train": len(y)}
    if keep:
        model.load_state_dict(best)
        fold_standardisation(model, mu, sd)
        out["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        out["standardisation"] = {"mean": mu.tolist(), "sd": sd.tolist()}
    return out


def cv_summary(runs: list[dict], steps: int) -> dict:
    """Mean validation accuracy over the folds at every evaluated step (a fold stopped early holds
    its last score); the best step: the highest mean accuracy, and of a plateau its last step (the
    final run anneals its learning rate to 0 at this step: the more of the plateau, the better fit)."""
    grid = sorted({c["step"] for r in runs for c in r["curve"]})

    def at(r, s, k):
        pts = [c[k] for c in r["curve"] if c["step"] <= s]
        return pts[-1] if pts else r["curve"][0][k]

    acc = [float(np.mean([at(r, s, "val_acc") for r in runs])) for s in grid]
    loss = [float(np.mean([at(r, s, "val_loss") for r in runs])) for s in grid]
    i = max(range(len(grid)), key=lambda j: (acc[j], grid[j]))
    return {"val_acc": acc[i], "val_loss": loss[i], "step": grid[i], "curve": [{"step": s, "val_acc": a, "val_loss": v} for s, a, v in zip(grid, acc, loss)]}


class Report:
    """The card as it grows: every stage writes its part, and :meth:`write` puts it on disk."""

    def __init__(self, out: Path, seq: str, opts: FitOptions):
        self.out, self.card = out, {"dataset": {"seq": seq}, "options": asdict(opts), "stages": {}, "status": "running",
                                    "test_split": "never read before every choice was made (stage verify only)"}

    def write(self):
        from intssm.outputs import write_text

        write_text(self.out / "card.json", json.dumps(self.card, indent=1) + "\n", quiet=True)
        write_text(self.out / "card.md", card_markdown(self.card), quiet=True)


def fit(seq: str, out: Path, opts: FitOptions, say=print) -> dict:
    """Run the five stages into folder ``out``; returns the card (also ``out/card.json``). A
    KeyboardInterrupt writes the card as it stands (the stages done, their files) and re-raises."""
    from intssm import data
    from intssm.outputs import check_dir

    check_options(opts)
    info = data.info(seq)  # an unusable dataset is refused before the output folder is made
    out = check_dir(out, inputs=[seq], what="--out")  # created if missing
    t0 = time.time()
    deadline = t0 + 60 * opts.max_minutes
    tr_all = data.load(seq, "train", None, 0.0)
    n = len(tr_all)
    cv = n < CV_BELOW
    rep = Report(out, seq, opts)
    rep.card["dataset"] |= {"checksum": tr_all.checksum, "n_train": n, "features": info.d_input, "classes": info.n_classes,
                            "max_length": info.max_len, "variable_length": info.varlen,
                            "validation": (f"stratified {opts.folds}-fold cross-validation over the {n} training sequences"
                                           if cv else "the dataset's validation split (stratified, seed 0)")}
    if opts.budget_bytes:
        opts = _fit_budget(seq, opts, info.max_len, rep, say)
    prev = _previous(out, rep.card, opts) if opts.resume else {}
    try:
        if "select" in prev:
            rep.card["stages"]["select"] = s = prev["select"]
            sel = next(r for r in s["candidates"] if r["name"] == s["chosen"])
            say(f"[1/5 select] reused from {out / 'card.json'}: {sel['name']} at step {sel['step']}")
        else:
            sel = _select(seq, opts, cv, deadline, t0, rep, say)
        if "float" in prev and "select" in prev:
            from intssm.training import checkpoint

            rep.card["stages"]["float"] = f = prev["float"]
            fl = {"path": out / "float.pt", "model": checkpoint.load(out / "float.pt")[0], "selection_acc": f["selection_acc"],
                  "vfrac": 0.0 if cv else None}
            say(f"[2/5 float] reused {out / 'float.pt'}")
        else:
            fl = _final(seq, opts, cv, sel, deadline, t0, rep, say)
        if "quantize" in prev and "float" in prev and "select" in prev:
            rep.card["stages"]["quantize"] = qs = prev["quantize"]
            q = {"path": out / "int.pt", "point": next(p for p in qs["points"] if p["config"] == qs["chosen"])}
            say(f"[3/5 quantize] reused {out / 'int.pt'}")
        else:
            q = _quantize(seq, opts, cv, fl, deadline, t0, rep, say)
        _verify(seq, opts, cv, q, rep, say)
    except KeyboardInterrupt:
        rep.card["status"] = "interrupted"
        rep.card["seconds"] = round(time.time() - t0, 1)
        rep.write()
        raise
    rep.card["status"] = "done"
    rep.card["seconds"] = round(time.time() - t0, 1)
    if time.time() > deadline:
        rep.card["over_budget_s"] = round(time.time() - deadline, 1)
    _front_plot(rep.card, out / "front.png")
    rep.write()
    say(f"[report] {out / 'card.md'}, {out / 'card.json'}, {out / 'front.png'}")
    return rep.card


BUDGET_SLACK = 1.1  # accounted bytes (intssm.integer.cost) may exceed the C export's deployed bytes by this much


def _fit_budget(seq: str, opts: FitOptions, L: int, rep: Report, say) -> FitOptions:
    """Keep the float candidates whose smallest preset can fit ``budget_bytes`` (accounted bytes,
    which need no training, within :data:`BUDGET_SLACK` of it); none: refuse before any training."""
    from dataclasses import replace

    from intssm.datapath.qspec import get_config
    from intssm.integer import cost

    def least(c):
        return min(cost.memory(model_config(seq, c), get_config(q), L)["bytes"] for q in opts.ladder)

    sizes = {_cand_name(c): least(c) for c in opts.candidates}
    keep = [c for c in opts.candidates if sizes[_cand_name(c)] <= BUDGET_SLACK * opts.budget_bytes]
    if not keep:
        raise IntssmError(f"--budget-bytes {opts.budget_bytes}: the smallest candidate needs about {min(sizes.values()):,} B "
                          "at the smallest quantization preset")
    dropped = [n for n in sizes if n not in {_cand_name(c) for c in keep}]
    if dropped:
        say(f"[budget] candidates that cannot fit {opts.budget_bytes} B left out: {'; '.join(dropped)}")
        rep.card["budget_dropped"] = {n: sizes[n] for n in dropped}
    return replace(opts, candidates=keep)


#: options that change no choice: a resumed run may differ from the first in these
RESUME_FREE = ("max_minutes", "resume", "workers", "executor", "ray_address", "target")


def _previous(out: Path, card: dict, opts: FitOptions) -> dict:
    """The stages a previous run into ``out`` completed, when its data (checksum) and its options
    (other than :data:`RESUME_FREE`) are this run's and the files each stage wrote are there."""
    try:
        old = json.loads((out / "card.json").read_text())
        same_data = old["dataset"]["checksum"] == card["dataset"]["checksum"]
        same_opts = {k: v for k, v in old["options"].items() if k not in RESUME_FREE} == \
                    {k: v for k, v in card["options"].items() if k not in RESUME_FREE}
        stages = old["stages"]
    except (OSError, ValueError, KeyError, TypeError):
        raise IntssmError(f"--resume: {out / 'card.json'} is missing or unreadable; run without --resume") from None
    if not same_data or not same_opts:
        raise IntssmError(f"--resume: {out} holds a run on other data or with other options; run without --resume or into a new folder")
    files = {"select": None, "float": "float.pt", "quantize": "int.pt"}
    return {k: stages[k] for k, f in files.items() if k in stages and (f is None or (out / f).is_file())}


def _stage_end(name: str, t0: float, deadline: float) -> float:
    """The time stage ``name`` must end by: its share of the whole budget after the earlier stages'."""
    total = deadline - t0
    acc = 0.0
    for k, v in STAGE_SHARE.items():
        acc += v
        if k == name:
            return t0 + acc * total
    return deadline


def _select(seq, opts, cv, deadline, t0, rep, say) -> dict:
    from intssm.executor import get_executor

    folds = opts.folds if cv else 1
    jobs = [dict(seq=seq, cand=c, fold=f, folds=folds, cv=cv, steps=opts.steps, seed=opts.seed, seconds=0.0)
            for c in opts.candidates for f in range(folds)]
    stop = _stage_end("select", t0, deadline)
    per_run = max(5.0, (stop - time.time()) * opts.workers / len(jobs))
    for j in jobs:
        j["seconds"] = per_run
    say(f"[1/5 select] {len(opts.candidates)} float candidates x {folds} {'folds' if cv else 'validation split'}, "
        f"{opts.steps} steps each (at most {per_run:.0f} s per run)")
    runs = []
    if opts.workers == 1:
        for i, j in enumerate(jobs):
            runs.append(float_run(**j))
            r = runs[-1]
            say(f"  {i + 1}/{len(jobs)} {_cand_name(r['cand'])} fold {r['fold']}: best val {max(c['val_acc'] for c in r['curve']):.3f} "
                f"({r['ended']}, {r['seconds']:.0f} s)")
    else:
        with get_executor(opts.executor, opts.workers, opts.ray_address) as ex:
            for k, (i, r) in enumerate(ex.map_unordered(float_run, jobs)):
                runs.append(r)
                say(f"  {k + 1}/{len(jobs)} {_cand_name(r['cand'])} fold {r['fold']}: best val "
                    f"{max(c['val_acc'] for c in r['curve']):.3f} ({r['ended']}, {r['seconds']:.0f} s)")
    rows = []
    for c in opts.candidates:
        rs = sorted((r for r in runs if r["cand"] == c), key=lambda r: r["fold"])
        s = cv_summary(rs, opts.steps)
        from intssm.training.model import S4DModel, n_params

        rows.append({"candidate": c, "name": _cand_name(c), "val_acc": s["val_acc"], "val_loss": s["val_loss"], "step": s["step"],
                     "params": n_params(S4DModel(model_config(seq, c))),
                     "folds": [{"fold": r["fold"], "best_val_acc": max(x["val_acc"] for x in r["curve"]), "ended": r["ended"],
                                "seconds": round(r["seconds"], 1)} for r in rs]})
    n_val = sum(len(_split_arrays(seq, cv, f, folds, opts.seed)[1][1]) for f in range(folds))
    best, se = one_se_choice(rows, n_val)
    rep.card["stages"]["select"] = {"candidates": rows, "chosen": best["name"], "chosen_step": best["step"],
                                    "standard_error": se, "validation_sequences": n_val,
                                    "rule": "the fewest parameters among the candidates whose mean validation accuracy is within one "
                                            "standard error of the best (sqrt(p (1 - p) / n) over the n validation sequences, p = (k + 1) / (n + 2)), "
                                            "then the higher accuracy and lower loss",
                                    "seconds": round(time.time() - t0, 1)}
    rep.write()
    say(f"  chosen: {best['name']} (mean val acc {best['val_acc']:.4f} at step {best['step']})")
    return best | {"runs": runs}


def one_se_choice(rows: list[dict], n_val: int) -> tuple[dict, float]:
    """The one-standard-error rule (Breiman et al. 1984): among the candidates whose mean validation
    accuracy is within one standard error of the best's, the fewest parameters (then the higher
    accuracy, the lower loss). The standard error is the binomial sqrt(p (1 - p) / n) over all
    ``n_val`` validation sequences, at the best accuracy smoothed by one success and one failure,
    p = (k + 1) / (n + 2) (Laplace), so that a perfect score does not claim a zero error; a
    difference smaller than it is noise, and the smaller model is then the better deployment."""
    top = max(rows, key=lambda r: (r["val_acc"], -r["val_loss"]))
    n = max(1, n_val)
    p = (top["val_acc"] * n + 1) / (n + 2)
    se = math.sqrt(p * (1 - p) / n)
    p = top["val_acc"]
    near = [r for r in rows if r["val_acc"] >= p - se - 1e-12]
    return min(near, key=lambda r: (r["params"], -r["val_acc"], r["val_loss"])), se


def _cand_name(c: dict) -> str:
    return f"d_model {c['d_model']}, {c['n_layers']} layer{'s' if c['n_layers'] > 1 else ''}, dropout {c['dropout']}"


def _final(seq, opts, cv, sel, deadline, t0, rep, say) -> dict:
    from intssm import data
    from intssm.training import checkpoint
    from intssm.training.model import S4DModel
    from intssm.training.train import evaluate

    stop = _stage_end("float", t0, deadline)
    if cv:
        say(f"[2/5 float] {sel['name']} on all {rep.card['dataset']['n_train']} training sequences, "
            f"a schedule of {sel['step']} steps (the cross-validated step count, learning rate annealed to 0 there)")
        r = float_run(seq, sel["candidate"], -1, opts.folds, cv, sel["step"], opts.seed, max(5.0, stop - time.time()), keep=True)
        vfrac = 0.0
    else:
        say(f"[2/5 float] {sel['name']}: the weights of its validation run (best validation step)")
        r = float_run(seq, sel["candidate"], 0, 1, cv, opts.steps, opts.seed, max(5.0, stop - time.time()), keep=True)
        vfrac = None
    model = S4DModel(model_config(seq, sel["candidate"]), seed=opts.seed)
    model.load_state_dict(r["state"])
    path = rep.out / "float.pt"
    tr = data.load(seq, "train", None, vfrac)
    checkpoint.save(path, model, quiet=True, dataset={"seq": seq, "checksum": tr.checksum, "val_fraction": vfrac},
                    fit={"candidate": sel["candidate"], "steps": r["curve"][-1]["step"], "standardisation": r["standardisation"]})
    sel_ds = data.load(seq, "train" if cv else "val", None, vfrac)
    acc, _ = evaluate(model, sel_ds.as_float(), sel_ds.y, lengths=sel_ds.lengths)
    rep.card["stages"]["float"] = {"checkpoint": str(path), "trained_on": f"{len(tr)} sequences", "steps": r["curve"][-1]["step"],
                                   "ended": r["ended"], "selection_acc": acc,
                                   "selection_sequences": ("the training sequences (seen in training)" if cv else "the validation split"),
                                   "cv_estimate": sel["val_acc"] if cv else None, "standardisation": r["standardisation"],
                                   "seconds": round(time.time() - t0, 1)}
    rep.write()
    say(f"  saved {path}: accuracy {acc:.4f} on the selection sequences" + (f" (cross-validation estimate {sel['val_acc']:.4f})" if cv else ""))
    return {"path": path, "model": model, "selection_acc": acc, "vfrac": vfrac}


def _deployed(qm, L) -> dict:
    from intssm.integer import cost
    from intssm.integer.cexport import c_storage
    from intssm.integer.export import from_quantized

    m = cost.memory(qm.dp.cfg, qm.dp.qcfg, L) | c_storage(from_quantized(qm))
    return {"bytes": m["bytes"], "deployed_bytes": m["c_flash_bytes"] + m["c_ram_bytes"], "c_flash_bytes": m["c_flash_bytes"],
            "c_ram_bytes": m["c_ram_bytes"], "fp32_bytes": m["fp32_bytes"]}


def _quantize(seq, opts, cv, fl, deadline, t0, rep, say) -> dict:
    from intssm import data
    from intssm.training import checkpoint
    from intssm.integer.score import int_accuracy
    from intssm.training.qat import Diverged, QATArgs, result_entries, start_from
    from intssm.training.qat import train as run_qat

    stop = _stage_end("quantize", t0, deadline)
    sel = data.load(seq, "train" if cv else "val", None, fl["vfrac"])
    goal = fl["selection_acc"] - opts.max_drop / 100
    L = data.info(seq).max_len
    say(f"[3/5 quantize] presets smallest first, until integer accuracy >= {goal:.4f} on the selection sequences"
        + (f" within {opts.budget_bytes} deployed bytes" if opts.budget_bytes else ""))
    # order the ladder by deployed bytes on this model (PTQ builds each datapath; cheap)
    starts = []
    for name in opts.ladder:
        st = start_from(fl["path"], name, 256)
        starts.append((_deployed(st.qm, L), name, st))
    starts.sort(key=lambda t: t[0]["deployed_bytes"])
    points, chosen = [], None
    for k, (mem, name, st) in enumerate(starts):
        pt = {"config": name} | mem
        if opts.budget_bytes and mem["deployed_bytes"] > opts.budget_bytes:
            points.append(pt | {"skipped": f"over the budget of {opts.budget_bytes} B"})
            say(f"  {name}: {mem['deployed_bytes']} B, over the budget")
            continue
        P = st.qm.input_codes(sel.x, sel.lengths)
        pt["ptq_acc"] = int_accuracy(st.qm, P, sel.y, sel.lengths)
        acc, how = pt["ptq_acc"], "ptq"
        from intssm.training.ptq import qspec_entry

        ptq_state = {k: v.detach().clone() for k, v in st.qm.model.state_dict().items()}
        ptq_extra = checkpoint.extras(st.ck, "qspec") | {"qspec": qspec_entry(st.qm, st.ranges), "ptq": {"config": name, "calib": 256, "seq": seq}}
        extra = ptq_extra
        if opts.qat_steps and time.time() < stop:  # QAT even where PTQ meets the goal: low-bit PTQ generalises worse
            n_tr = len(data.load(seq, "train", None, fl["vfrac"]))
            epochs = max(1, math.ceil(opts.qat_steps / math.ceil(n_tr / 16)))
            left = max(0.2, (stop - time.time()) / 60 / max(1, len(starts) - k))
            qargs = QATArgs(param="frozen", epochs=epochs, batch_size=16, lr=1e-3, seed=opts.seed, max_minutes=left,
                            val_fraction=fl["vfrac"])
            try:
                best, history, interrupted = run_qat(st.qm, seq, qargs, int_accuracy)
            except Diverged as e:  # the best finished epoch (at worst the PTQ start) stands
                best, history, interrupted = e.best, e.history, None
                pt["qat_diverged"] = e.where
            if interrupted is not None:  # Ctrl-C / SIGTERM inside QAT: the run stops here, its card as it stands
                raise KeyboardInterrupt
            extra = result_entries(st, best, history, None, qargs)
            pt["qat_epochs"] = len(history) - 1
            pt["qat_stopped"] = next((h["stopped"] for h in history if "stopped" in h), None)
            pt["qat_acc"] = int_accuracy(st.qm, P, sel.y, sel.lengths)
            if pt["qat_acc"] >= pt["ptq_acc"]:
                acc, how = pt["qat_acc"], "qat"
            else:  # QAT scored lower on the selection sequences than the PTQ model it started from: keep PTQ
                st.qm.model.load_state_dict(ptq_state)
                extra = ptq_extra
        pt |= {"selection_int_acc": acc, "method": how, "meets_goal": acc >= goal}
        points.append(pt)
        say(f"  {name}: {mem['deployed_bytes']} B deployed, PTQ {pt['ptq_acc']:.4f}" + (f", QAT {pt['qat_acc']:.4f}" if "qat_acc" in pt else "")
            + (" (PTQ kept)" if "qat_acc" in pt and how == "ptq" else "")
            + (" -- meets the goal" if acc >= goal else ""))
        if chosen is None or acc > chosen[0]["selection_int_acc"] or acc >= goal:
            chosen = (pt, st, extra)
        if acc >= goal:
            break
        if time.time() > stop:
            say("  the quantization stage's time is spent: keeping the best so far")
            pt["note"] = "quantization time budget spent after this point"
            break
    if chosen is None:
        raise IntssmError(f"no quantization preset fits --budget-bytes {opts.budget_bytes}; the smallest needs {starts[0][0]['deployed_bytes']} B")
    pt, st, extra = chosen
    path = rep.out / "int.pt"
    checkpoint.save(path, st.qm.model, quiet=True, **extra)
    rep.card["stages"]["quantize"] = {"points": points, "chosen": pt["config"], "goal_selection_acc": goal,
                                      "goal_met": bool(pt["meets_goal"]), "checkpoint": str(path),
                                      "rule": "the smallest preset (deployed bytes) within the budget whose integer accuracy on the "
                                              "selection sequences is within --max-drop of the float model's; none: the most accurate",
                                      "seconds": round(time.time() - t0, 1)}
    rep.write()
    say(f"  kept {pt['config']} ({pt['deployed_bytes']} B): {path}" + ("" if pt["meets_goal"] else " -- goal NOT met"))
    return {"path": path, "point": pt}


def _verify(seq, opts, cv, q, rep, say) -> None:
    from intssm import data, sources
    from intssm.datapath import layout
    from intssm.integer import cexport, cost, export

    say("[4/5 verify] integer simulator == Torch quantized model on every selection and test sequence; artifact; C export")
    im = sources.load(q["path"])
    m = im.model
    res = {}
    for name, ds in (("selection", data.load(seq, "train" if cv else "val", None, 0.0 if cv else None)),
                     ("test", data.load(seq, "test"))):
        im.check_data(ds)
        P = im.input_codes(ds)
        logits, cnts, _ = sources.run(m, P, lengths=ds.lengths)
        ref = sources.torch_logits(im.qm, P, lengths=ds.lengths)
        exact = int((ref == logits).all(axis=1).sum())
        fl_acc = _float_acc(rep.out / "float.pt", ds)
        res[name] = {"n": len(ds), "int_acc": float((logits.argmax(1) == ds.y).mean()), "float_acc": fl_acc, "bit_exact": exact,
                     "saturations": {k: int(v) for k, v in zip(m.counters, cnts.sum(0))}}
        events = layout.counter_events(m.cfg, int(ds.lengths.sum()), len(ds))
        res[name]["saturation_rates"] = {k: int(v) / events[k] for k, v in zip(m.counters, cnts.sum(0)) if v}
        say(f"  {name}: integer {res[name]['int_acc']:.4f}, float {fl_acc:.4f}, bit-exact {exact}/{len(ds)}")
        if exact != len(ds):
            raise IntssmError(f"simulator and Torch quantized model disagree on {len(ds) - exact} {name} sequences")
    warnings = integer_warnings(res["selection"])
    for w in warnings:
        say(f"  warning: {w}")
    man = export.save(rep.out / "model.npz", im.qm, m)
    files = cexport.write_c(m, rep.out / "c")
    prof = cost.profile(m.cfg, m.qcfg, m.seq_len, m.input.bits)
    ops = int(sum(prof["step_ops"].values()))
    card = {"results": res, "warnings": warnings, "artifact": str(rep.out / "model.npz"), "format_version": man["format_version"],
            "c_export": [str(f) for f in files], "ops_per_step": ops, "step_ops": prof["step_ops"],
            "memory": q["point"] | {"config": q["point"]["config"]}}
    if opts.target != "host":
        from intssm.deploy import deploy

        say(f"  {opts.target} (emulated): building and running test sequences")
        r = deploy(q["path"], rep.out / "c", opts.target, 100, 32)
        card["mcu"] = {k: r["integer"].get(k) for k in ("bit_exact_sequences", "sequences", "flash_bytes", "ram_bytes",
                                                          "cycles_per_step", "instructions_per_step")} | ({"error": r["error"]} if "error" in r else {})
    rep.card["stages"]["verify"] = card
    rep.write()




def integer_warnings(sel: dict) -> list[str]:
    """What suggests the integer model is not what the float one was, from the selection sequences
    (never the test split): a state clipped on more than
    :data:`intssm.datapath.layout.STATE_SATURATION_WARN` of its updates, or an integer accuracy more
    than :data:`~intssm.datapath.layout.COLLAPSE_WARN` below the float model's."""
    from intssm.datapath.layout import COLLAPSE_WARN, STATE_SATURATION_WARN

    out = []
    for k, r in sel["saturation_rates"].items():
        if k.split(".")[-1] in ("x_re", "x_im") and r > STATE_SATURATION_WARN:
            out.append(f"state {k} saturates on {100 * r:.2f}% of its updates (the float model's state is not reproduced)")
    if sel["int_acc"] < sel["float_acc"] - COLLAPSE_WARN:
        out.append(f"integer accuracy {100 * sel['int_acc']:.2f}% is {100 * (sel['float_acc'] - sel['int_acc']):.1f} points "
                   f"below the float model's {100 * sel['float_acc']:.2f}% on the selection sequences")
    return out


def _float_acc(path, ds) -> float:
    from intssm.training import checkpoint
    from intssm.training.train import evaluate

    model, _ = checkpoint.load(path)
    return evaluate(model, ds.as_float(), ds.y, lengths=ds.lengths)[0]


def _front_plot(card: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from intssm.outputs import write_png

    pts = [p for p in card["stages"]["quantize"]["points"] if "selection_int_acc" in p]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["deployed_bytes"] for p in pts], [100 * p["selection_int_acc"] for p in pts], "o-", label="integer, kept (selection sequences)")
    ax.plot([p["deployed_bytes"] for p in pts], [100 * p["ptq_acc"] for p in pts], "x", color="gray", label="integer, PTQ only")
    for p in pts:
        ax.annotate(p["config"], (p["deployed_bytes"], 100 * p["selection_int_acc"]), fontsize=7)
    ax.axhline(100 * card["stages"]["float"]["selection_acc"], color="gray", ls="--", label="float model")
    ax.axhline(100 * card["stages"]["quantize"]["goal_selection_acc"], color="red", ls=":", label="goal (--max-drop)")
    ax.set_xlabel("deployed bytes (C constants + state)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"intssm fit: {Path(card['dataset']['seq']).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    write_png(path, fig, quiet=True)


def card_markdown(c: dict) -> str:
    """The model card in words and tables, from ``card.json``."""
    d, st = c["dataset"], c["stages"]
    lines = [f"# Model card: {Path(d['seq']).name}", "",
             f"Status: **{c['status']}**" + (f" after {c['seconds']} s" if "seconds" in c else ""), "",
             f"- data: `{d['seq']}` (sha256 {d.get('checksum', '?')[:16]}...), {d.get('n_train')} training sequences, "
             f"{d.get('features')} features per step, {d.get('classes')} classes, length up to {d.get('max_length')}",
             f"- validation: {d.get('validation')}",
             f"- test split: {c['test_split']}", ""]
    if "select" in st:
        s = st["select"]
        se = (f" Here one standard error is {100 * s['standard_error']:.2f} points over {s['validation_sequences']} "
              "validation sequences." if "standard_error" in s else "")
        lines += ["## 1. Float model selection", "", f"Rule: {s['rule']}.{se}", "",
                  "| candidate | parameters | mean validation accuracy | at step |", "|---|---|---|---|"]
        lines += [f"| {r['name']}{' **(chosen)**' if r['name'] == s['chosen'] else ''} | {r['params']:,} | {100 * r['val_acc']:.2f}% | {r['step']} |"
                  for r in s["candidates"]]
        lines.append("")
    if "float" in st:
        f = st["float"]
        lines += ["## 2. Float model", "", f"`{f['checkpoint']}`: trained on {f['trained_on']} for {f['steps']} steps (ended by: {f['ended']}); "
                  f"accuracy on {f['selection_sequences']}: {100 * f['selection_acc']:.2f}%"
                  + (f"; cross-validation estimate {100 * f['cv_estimate']:.2f}%" if f.get("cv_estimate") is not None else "")
                  + ". Input standardisation folded into the encoder.", ""]
    if "quantize" in st:
        q = st["quantize"]
        lines += ["## 3. Quantization", "", f"Rule: {q['rule']}. Goal: {100 * q['goal_selection_acc']:.2f}% "
                  f"({'met' if q['goal_met'] else '**not met**'}).", "",
                  "| config | deployed bytes | PTQ | after QAT | meets goal |", "|---|---|---|---|---|"]
        for p in q["points"]:
            if "selection_int_acc" not in p:
                lines.append(f"| {p['config']} | {p['deployed_bytes']:,} | {p.get('skipped', '')} | | |")
                continue
            qat_txt = (f"{100 * p['qat_acc']:.2f}%" if "qat_acc" in p else "-") + (" (PTQ kept)" if p["method"] == "ptq" and "qat_acc" in p else "")
            lines.append(f"| {p['config']}{' **(chosen)**' if p['config'] == q['chosen'] else ''} | {p['deployed_bytes']:,} | "
                         f"{100 * p['ptq_acc']:.2f}% | {qat_txt} | "
                         f"{'yes' if p['meets_goal'] else 'no'} |")
        lines.append("")
    if "verify" in st:
        v = st["verify"]
        m = v["memory"]
        lines += ["## 4. Verified integer model", "",
                  "| split | sequences | float | integer | bit-exact (simulator == Torch) |", "|---|---|---|---|---|"]
        for k, r in v["results"].items():
            lines.append(f"| {k} | {r['n']} | {100 * r['float_acc']:.2f}% | {100 * r['int_acc']:.2f}% | {r['bit_exact']} / {r['n']} |")
        lines += ["", f"Config `{m['config']}`: {m['deployed_bytes']:,} B deployed (C constants {m['c_flash_bytes']:,} B + state "
                  f"{m['c_ram_bytes']:,} B; {m['bytes']:,} B accounted; float32 {m['fp32_bytes']:,} B); "
                  f"{v['ops_per_step']:,} integer operations per step.",
                  f"Files: `{v['artifact']}` (integer artifact), C export in `{Path(v['c_export'][0]).parent}`."]
        if "mcu" in v:
            u = v["mcu"]
            lines.append(f"Emulated {c['options']['target']}: {u['bit_exact_sequences']} / {u['sequences']} test sequences bit-exact "
                         f"with the simulator; flash {u['flash_bytes']:,} B, RAM {u['ram_bytes']:,} B, "
                         f"~{u['cycles_per_step']:,.0f} cycles per step" + (f"; error: {u['error']}" if "error" in u else ""))
        sats = {k: s for k, s in v["results"]["test"]["saturations"].items() if s}
        lines += [f"Saturations on test: {sats or 'none'}.", ""]
        lines += [f"**Warning:** {w}." for w in v.get("warnings", [])] + ([""] if v.get("warnings") else [])
    return "\n".join(lines) + "\n"
