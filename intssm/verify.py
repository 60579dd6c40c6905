"""Scoring a model on a dataset: the float model (``intssm eval``) and the integer model in the
simulator, verified integer for integer against the Torch quantized model (``intssm simulate``).

Each function loads, checks, runs and returns ``(result, text)``: the JSON-able result and the
lines a person reads; the command prints one or the other. Progress goes to stderr
(:mod:`intssm.progress`) when ``show`` is set.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from intssm import outputs
from intssm.errors import IntssmError
from intssm.progress import progress_bar


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def evaluate_float(ckpt, seq: str | None = None, other_data: bool = False, mode: str = "conv", split: str = "test",
                   limit: int | None = None, show: bool = True, note=_stderr) -> tuple[dict, str]:
    """Accuracy of a float checkpoint's model (convolution or recurrent mode) on ``split`` of its
    own dataset (or ``seq``). A quantized checkpoint's float weights are scored on the inputs they
    read (its input quantizer's codes, ``p / 255``). ``note``: called with each remark for stderr."""
    from intssm import data
    from intssm.datapath.inputq import model_input
    from intssm.training import checkpoint
    from intssm.training.train import evaluate

    if mode not in ("conv", "recurrent"):
        raise IntssmError(f"--mode must be conv or recurrent, got {mode!r}")
    model, ck = checkpoint.load(ckpt)
    seq = seq or checkpoint.dataset_seq(ck)
    ds = data.load(seq, split, limit)
    ds.check_features(model.cfg.d_input)
    ds.check_labels(model.cfg.d_output)
    remark = checkpoint.check_own_data(ckpt, ck, ds, other_data)
    if remark:
        note(remark)
    x = ds.as_float()
    scored = "float model"
    if "qspec" in ck:  # the float weights of a quantized checkpoint, on the inputs they read
        from intssm.training.ptq import from_checkpoint

        qm = from_checkpoint(model, ck)
        x = model_input(qm.input_codes(ds.x, ds.lengths))
        note(f"{ckpt} is quantized: scoring its float weights (intssm simulate scores the integer model)")
        scored = "float weights of a quantized checkpoint (not the integer model)"
    t0 = time.time()
    with progress_bar(f"eval {mode}", len(ds), enabled=show) as adv:
        acc, loss = evaluate(model, x, ds.y, mode=mode, progress=adv, lengths=ds.lengths)
    dt = time.time() - t0
    res = {"accuracy": acc, "loss": loss, "n": len(ds), "mode": mode, "seq": seq, "split": split, "scored": scored,
           "seconds": dt, "sequences_per_s": len(ds) / dt}
    return res, f"{ds.name} {mode}: accuracy {acc:.4f} ({round(acc * len(ds))}/{len(ds)}), loss {loss:.4f}, {dt:.1f} s"


def parse_verify(verify: str) -> int | None:
    """``--verify``: a number of sequences >= 0, or ``all`` (None)."""
    if verify == "all":
        return None
    try:
        n = int(verify)
    except ValueError:
        raise IntssmError(f"--verify takes a number or 'all', got {verify!r}") from None
    if n < 0:
        raise IntssmError(f"--verify must be >= 0, got {n}")
    return n


def simulate(model, seq: str | None = None, other_data: bool = False, split: str = "test", limit: int | None = None,
             n_verify: int | None = 256, trace=None, trace_index: int = 0, logits_out=None, show: bool = True,
             note=_stderr, loading=None) -> tuple[dict, str, str | None]:
    """Run the integer simulator of ``model`` (any source :func:`intssm.sources.load` takes) on a
    dataset split and verify the first ``n_verify`` sequences (None: all; 0: none, and a quantized
    checkpoint may come from the integer-model cache) against the Torch quantized model.

    ``trace``: write the state trace of sequence ``trace_index`` (``x_re``, ``x_im`` codes
    (steps, layers, H, N/2), its ``logits``, ``counters`` and ``index``) to this ``.npz``;
    ``logits_out``: write golden vectors (``logits``, ``pred``, ``labels``, ``lengths``,
    ``counters``, ``counter_names``). ``loading``: a context manager factory shown while the
    kernels load. Returns (result, text, error): ``error`` is the disagreement to report after
    printing (None when every verified sequence is bit-exact)."""
    from contextlib import nullcontext

    from intssm import data, sources
    from intssm.datapath.layout import COLLAPSE_WARN, state_saturation_words
    from intssm.integer.sim import simulate as sim

    for path, what in ((trace, "--trace"), (logits_out, "--logits")):
        if path is not None:
            outputs.check_file(path, inputs=[model, seq], what=what, suffix=".npz")
    if trace is not None and logits_out is not None and Path(trace).resolve() == Path(logits_out).resolve():
        raise IntssmError("--trace and --logits must be different files")
    if trace_index < 0:
        raise IntssmError(f"--trace-index must be >= 0, got {trace_index}")
    lm = sources.load(model, torch_model=n_verify != 0)  # --verify 0: no Torch model, the integer-model cache
    m = lm.model
    seq = seq or lm.dataset or "smnist"
    ds = data.load(seq, split, limit)
    P = lm.input_codes(ds)
    lm.check_data(ds)
    if Path(model).suffix != ".npz":
        from intssm.training import checkpoint

        remark = checkpoint.check_own_data(model, checkpoint.load_raw(model), ds, other_data)
        if remark:
            note(remark)
    n = len(ds)
    if trace is not None and trace_index >= n:
        raise IntssmError(f"--trace-index {trace_index} is beyond the {n} sequences of {ds.name}")
    with (loading or nullcontext)():  # compile (first run) / load the JIT cache outside the timing
        sim(m, P[:1], lengths=ds.lengths[:1])
    with progress_bar("simulate", n, enabled=show) as adv:
        logits, cnts, secs = sources.run(m, P, progress=adv, lengths=ds.lengths)
    pred = logits.argmax(1)
    acc = float((pred == ds.y).mean())
    nv = 0 if lm.qm is None else (n if n_verify is None else min(n_verify, n))
    exact = 0
    if nv:
        with progress_bar("verify (Torch)", nv, enabled=show) as adv:
            ref = sources.torch_logits(lm.qm, P[:nv], progress=adv, lengths=ds.lengths[:nv])
        exact = int((ref == logits[:nv]).all(axis=1).sum())
    sats = {name: int(v) for name, v in zip(m.counters, cnts.sum(0))}
    steps = int(ds.lengths.sum())
    warnings = state_saturation_words(m.cfg, sats, steps, n)
    if nv:  # a checkpoint: its float weights on the verified sequences' codes
        f_acc = sources.float_accuracy(lm.qm, P[:nv], ds.y[:nv], ds.lengths[:nv])
        i_acc = float((pred[:nv] == ds.y[:nv]).mean())
        if i_acc < f_acc - COLLAPSE_WARN:
            warnings.append(f"integer accuracy {100 * i_acc:.2f}% is {100 * (f_acc - i_acc):.1f} points below the float weights' "
                            f"{100 * f_acc:.2f}% on the {nv} verified sequences: the integer model is not what the float one is "
                            "(intssm qat --ranges calibrated, or more bits)")
    res = {"accuracy": acc, "n": n, "n_verified": nv, "bit_exact": exact, "saturations": sats, "warnings": warnings,
           "steps_per_s": steps / secs, "sequences_per_s": n / secs, "sim_seconds": secs,
           "model": str(model), "source": lm.source, "seq": seq, "split": split}
    if trace:
        j = slice(trace_index, trace_index + 1)
        lg1, c1, (tr, ti) = sim(m, P[j], trace=True, lengths=ds.lengths[j])
        L1 = int(ds.lengths[trace_index])
        with outputs.atomic(trace) as tmp:
            np.savez_compressed(tmp, x_re=tr[:L1], x_im=ti[:L1], logits=lg1[0], counters=c1[0], index=np.int64(trace_index))
        res["trace"] = str(trace)
    if logits_out:
        with outputs.atomic(logits_out) as tmp:
            np.savez_compressed(tmp, logits=logits, pred=pred, labels=ds.y.astype(np.int64), lengths=ds.lengths.astype(np.int64),
                                counters=cnts, counter_names=np.array(m.counters))
        res["logits"] = str(logits_out)
    sat_txt = ", ".join(f"{k} {v}" for k, v in sats.items() if v) or "none"
    verified = (f"verified against Torch quantized model: {exact}/{nv} sequences with identical integer logits" if nv
                else "not verified (--verify 0)" if n_verify == 0
                else "not verified: an .npz artifact holds integers only, no Torch model to compare with")
    text = (f"{lm.source}\n{ds.name}: integer accuracy {acc:.4f} ({int((pred == ds.y).sum())}/{n})\n"
            f"{verified}\n"
            f"saturations: {sat_txt}\n" + "".join(f"warning: {w}\n" for w in warnings) +
            f"speed: {steps / secs:,.0f} steps/s, {n / secs:,.0f} sequences/s ({secs:.2f} s in the simulator)")
    error = f"simulator and Torch quantized model disagree on {nv - exact} of {nv} sequences" if nv and exact != nv else None
    return res, text, error
