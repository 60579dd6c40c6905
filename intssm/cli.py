"""The ``intssm`` command line: thin commands that hand off to the library.

Every command accepts ``--json`` and then prints exactly one JSON object on stdout. Bad input
ends in one line on stderr (``error: ...``) and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from intssm import outputs
from intssm.progress import progress_bar
from intssm.data import DATA_DIR
from intssm.errors import IntssmError, Interrupted
from intssm.training.recipe import check_seed_threads  # noqa: F401  (torch-free; qat checks its seed with it)

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
SeqOpt = Annotated[str, typer.Option("--seq", help="smnist | psmnist | UEA/UCR .ts dataset (directory or NAME_TRAIN.ts) | IDX directory | .npz file.")]
ValFracOpt = Annotated[Optional[float], typer.Option(help="Validation share of the training sequences, stratified and seeded (default 0.2; 0 = none, the last epoch is kept). sMNIST always holds out its last 10,000.")]
ModelSeqOpt = Annotated[Optional[str], typer.Option("--seq", help="Dataset (default: the model's own, as its checkpoint records it; smnist if it records none).")]
OtherDataOpt = Annotated[bool, typer.Option("--other-data", help="Score data other than the model's own dataset (refused without it when the checkpoint records its data's checksum).")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Use only the first N sequences.")]
EqualizeOpt = Annotated[float, typer.Option(help="State equalization strength alpha in [0, 1] (intssm.training.equalize): rescale each mode's B and C so its state range approaches its head's before calibrating (0 = off).")]

CKPT_DIR = DATA_DIR / "checkpoints"
DEFAULT_FLOAT_CKPT = CKPT_DIR / "paper-small-seed7-fp32.pt"  # the default quantized model's float parent
DEFAULT_QUANT_CKPT = CKPT_DIR / "paper-small-hetero.pt"  # the best heterogeneous QAT model


def _emit(obj: dict, as_json: bool, human: str):
    if as_json:
        sys.stdout.write(json.dumps(obj) + "\n")
    else:
        typer.echo(human)


def _small_torch_ops():
    """The Torch quantized model runs many tiny ops per step: one thread beats two (no spinning),
    unless the user set OMP_NUM_THREADS."""
    import os

    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


@contextmanager
def _kernels_status(enabled: bool):
    """A spinner while the Numba kernels load: compiled on first use (about a minute), then cached."""
    if not enabled:
        yield
        return
    with err.status("loading the simulator's kernels (compiled once on first use, about a minute; cached after)"):
        yield


def _from_command_line(ctx, name: str) -> bool:
    """Whether option ``name`` was given on the command line (not left at its default)."""
    try:
        src = ctx.get_parameter_source(name)
    except Exception:  # noqa: BLE001 (no click context: treat as not given)
        return False
    return src is not None and getattr(src, "name", "") in ("COMMANDLINE", "ENVIRONMENT")


def _check_limit(limit):
    if limit is not None and limit < 1:
        raise IntssmError(f"--limit must be a positive number of sequences, got {limit}")


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the checkpoint.")],
    preset: Annotated[str, typer.Option(help="Model preset: paper-small | base | tiny.")] = "paper-small",
    seq: SeqOpt = "smnist",
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (the epoch schedule). Default: 30, or the step schedule when the training split holds fewer than 2,000 sequences or float features.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps of the step schedule (default 1000): warm-up, cosine decay, inputs standardised and folded into the encoder, early stopping.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per batch (default: 128, or n/16 (>= 8) below 2,048 sequences; the step schedule n/8 in [8, 64]).")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate (non-SSM parameters).")] = 1e-2,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay of the non-SSM parameters.")] = 0.01,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout after the activation (default: the preset's).")] = None,
    pool: Annotated[Optional[str], typer.Option(help="mean | last (default: the preset's; 'last' for variable-length data, which the integer datapath needs).")] = None,
    val_fraction: ValFracOpt = None,
    ssm_lr: Annotated[float, typer.Option(help="Learning rate of dt, A, B (no weight decay).")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed for init, shuffling and dropout.")] = 0,
    limit: LimitOpt = None,
    threads: Annotated[int, typer.Option(help="Torch threads (0 = default).")] = 0,
    d_model: Annotated[Optional[int], typer.Option(help="Override the preset's d_model.")] = None,
    d_state: Annotated[Optional[int], typer.Option(help="Override the preset's d_state (even).")] = None,
    n_layers: Annotated[Optional[int], typer.Option(help="Override the preset's number of layers.")] = None,
    device: Annotated[str, typer.Option(help="Torch device: cpu | cuda.")] = "cpu",
    max_minutes: Annotated[float, typer.Option(help="Stop after the epoch that would pass this many minutes (0 = no limit).")] = 0.0,
    min_decay: Annotated[float, typer.Option(help="Keep 1 - |Abar| >= this for every mode (e.g. 2**-b for a b-bit state; 0 = off).")] = 0.0,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run from the checkpoint it saved (its dataset, model and training options are used; the result equals an uninterrupted run's; an option given that differs from the run's is refused, as is changed data).")] = None,
    as_json: JsonOpt = False,
    ctx: typer.Context = None,
):
    """Train a float S4D in convolution mode; keeps the best-on-validation weights.

    The dataset sets the model's ends (features per step, classes); the preset its body. Small or
    float data get the step schedule (docs/usage.md). Ctrl-C or SIGTERM saves the best epoch so far
    (marked interrupted) and exits 130 / 143; --resume goes on."""
    from intssm.training.recipe import RESUMED_OPTIONS, TrainOptions, run

    opts = dict(preset=preset, seq=seq, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, ssm_lr=ssm_lr,
                weight_decay=weight_decay, dropout=dropout, pool=pool, val_fraction=val_fraction, seed=seed, limit=limit,
                threads=threads, d_model=d_model, d_state=d_state, n_layers=n_layers, device=device,
                max_minutes=max_minutes, min_decay=min_decay)
    given = tuple(k for k in RESUMED_OPTIONS if _from_command_line(ctx, k))
    r = run(TrainOptions(out=out, resume=resume, given=given, **opts), say=err.print,
            on_epoch=lambda rec: err.print(json.dumps(rec), soft_wrap=True),
            progress=lambda total: progress_bar("train", total, enabled=not as_json))
    txt = (f"saved {out} (no validation split: last epoch {r.best_epoch} kept)" if r.val_acc is None else
           f"saved {out} (best epoch {r.best_epoch}, val acc {r.val_acc:.4f})") + _stopped_words(r.history, r.epochs)
    _emit({"out": str(out), "best_epoch": r.best_epoch, "val_acc": r.val_acc, "schedule": r.schedule, "history": r.history},
          as_json, txt)


@app.command()
def fit(
    seq: Annotated[str, typer.Option("--seq", help="The dataset: UEA/UCR .ts dataset (directory or NAME_TRAIN.ts) | .npz | IDX directory | smnist | psmnist.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for float.pt, int.pt, model.npz, c/, card.md, card.json, front.png.")],
    max_minutes: Annotated[float, typer.Option(help="Time budget of the whole run, shared by its stages.")] = 15.0,
    budget_bytes: Annotated[Optional[int], typer.Option(help="Deployed bytes (C constants + state) the integer model must fit.")] = None,
    max_drop: Annotated[float, typer.Option(help="Points of accuracy the integer model may lose against the float model, on the selection sequences.")] = 1.0,
    steps: Annotated[int, typer.Option(help="Optimizer steps of each float run (warm-up, cosine decay, early stopping).")] = 1000,
    folds: Annotated[int, typer.Option(help="Cross-validation folds (datasets under 1,000 training sequences).")] = 3,
    qat_steps: Annotated[int, typer.Option(help="QAT optimizer steps per quantization preset (batch 16); 0 = PTQ only.")] = 300,
    workers: Annotated[int, typer.Option(help="Parallel float runs (1: in this process).")] = 1,
    executor: Annotated[str, typer.Option(help="local | ray (with --workers > 1).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: a local Ray instance).")] = None,
    target: Annotated[str, typer.Option(help="host | cortex-m4 | cortex-m3: also run the C export on the emulated microcontroller.")] = "host",
    seed: Annotated[int, typer.Option(help="Seed of the folds, initialisation and batches.")] = 0,
    resume: Annotated[bool, typer.Option(help="Reuse the stages an earlier (interrupted) run into --out completed (same data and options).")] = False,
    as_json: JsonOpt = False,
):
    """From a dataset to a small verified integer model: float model selection (cross-validation on
    small data), quantization to the goal, bit-exact verification, C export and a model card.

    The test split is read only after every choice is made. Ctrl-C writes the card as it stands."""
    from intssm.fit import FitOptions, check_options
    from intssm.fit import fit as run_fit

    opts = FitOptions(max_minutes=max_minutes, budget_bytes=budget_bytes, max_drop=max_drop, steps=steps, folds=folds,
                      qat_steps=qat_steps, workers=workers, executor=executor, ray_address=ray_address, seed=seed, target=target,
                      resume=resume)
    check_options(opts)  # before Torch is imported: a bad option costs nothing
    _small_torch_ops()
    say = (lambda m: None) if as_json else (lambda m: err.print(m, markup=False, highlight=False, soft_wrap=True))
    try:
        card = run_fit(seq, out, opts, say=say)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {out / 'card.json'} holds the stages completed so far; "
                          f"continue with the same command and --resume") from None
    v = card["stages"]["verify"]
    r, m = v["results"], v["memory"]
    q = card["stages"]["quantize"]
    human = (f"{out}: {m['config']}, {m['deployed_bytes']:,} B deployed; integer test accuracy {r['test']['int_acc']:.4f} "
             f"(float {r['test']['float_acc']:.4f}), bit-exact {r['test']['bit_exact']}/{r['test']['n']}; "
             f"goal {'met' if q['goal_met'] else 'NOT met'} on the selection sequences; {card['seconds']:.0f} s")
    _emit({"out": str(out), "card": card}, as_json, human)


@app.command("eval")
def eval_(
    ckpt: Annotated[Path, typer.Argument(help="Float checkpoint (.pt).")] = DEFAULT_FLOAT_CKPT,
    seq: ModelSeqOpt = None,
    other_data: OtherDataOpt = False,
    mode: Annotated[str, typer.Option(help="conv | recurrent.")] = "conv",
    split: Annotated[str, typer.Option(help="test | val | train.")] = "test",
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
):
    """Accuracy of a float checkpoint (convolution or recurrent mode)."""
    from intssm import verify

    _check_limit(limit)
    res, text = verify.evaluate_float(ckpt, seq, other_data, mode, split, limit, show=not as_json, note=_note)
    _emit(res, as_json, text)


@app.command()
def models(as_json: JsonOpt = False):
    """The curated shipped models: task, test accuracy, bytes accounted and deployed (C), how each was made."""
    from intssm.models import describe, load_registry

    entries = load_registry()
    _emit({"models": entries}, as_json, "\n".join(describe(e) for e in entries))


@app.command()
def configs(as_json: JsonOpt = False):
    """List the quantization config presets."""
    from intssm.datapath.qspec import preset_table

    rows = preset_table()
    lines = [f"{name:14s} " + " ".join(f"{k}={v}" for k, v in r.items()) for name, r in rows.items()]
    _emit({"configs": rows}, as_json, "bits, s = symmetric / a = asymmetric, /ch = per channel, @policy = range policy other than min/max\n" + "\n".join(lines))


@app.command("ptq")
def ptq_(
    ckpt: Annotated[Path, typer.Argument(help="Float checkpoint (.pt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Quantized checkpoint to write.")],
    config: Annotated[str, typer.Option(help="Preset name (intssm configs) or JSON file.")] = "w8a8",
    calib: Annotated[int, typer.Option(help="Training sequences used to calibrate ranges.")] = 256,
    seq: Annotated[Optional[str], typer.Option(help="Dataset (default: the checkpoint's).")] = None,
    equalize: EqualizeOpt = 0.0,
    as_json: JsonOpt = False,
):
    """Post-training quantization: calibrate every range on training data, write a quantized checkpoint."""
    from intssm.datapath.qspec import get_config

    if calib < 1:
        raise IntssmError(f"--calib must be positive, got {calib}")
    outputs.check_file(out, inputs=[ckpt, config, seq], what="--out")
    get_config(config)  # before Torch is imported: a bad config costs nothing
    from intssm.training.ptq import PTQOptions, run

    _small_torch_ops()
    r = run(PTQOptions(ckpt=ckpt, out=out, config=config, calib=calib, seq=seq, equalize=equalize), status=err.status)
    _emit({"out": str(out), "config": config, "calib": calib}, as_json, f"saved {out} ({config}, calibrated on {calib} sequences of {r['seq']})")


@app.command("qat")
def qat_(
    ckpt: Annotated[Path, typer.Argument(help="Float or quantized checkpoint (.pt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Quantized checkpoint to write.")],
    config: Annotated[Optional[str], typer.Option(help="Preset or JSON file (default w8a8); for a quantized checkpoint, re-quantizes it at these formats on its stored ranges (default: keep its own).")] = None,
    param: Annotated[str, typer.Option(help="Abar parameterisation: continuous | frozen | discrete.")] = "frozen",
    epochs: Annotated[Optional[int], typer.Option(help="QAT epochs (default: the fewest giving 300 optimizer steps; sMNIST: 1).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per batch (default: n/16 training sequences, 8 to 64).")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine decay).")] = 1e-3,
    warmup: Annotated[Optional[float], typer.Option(help="Share of the steps warming the learning rate up (default: 0.05 when the default runs more than one epoch, else 0).")] = None,
    calib: Annotated[int, typer.Option(help="Calibration sequences (float checkpoint).")] = 256,
    limit: LimitOpt = None,
    val_limit: Annotated[Optional[int], typer.Option(help="Validation sequences for model selection (default: the whole split).")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    max_minutes: Annotated[float, typer.Option(help="Stop training after this many minutes (0 = no limit).")] = 0.0,
    distill: Annotated[float, typer.Option(help="Knowledge-distillation weight alpha in [0, 1]: loss = (1 - alpha) CE + alpha T^2 KL to a float teacher (0 = off).")] = 0.0,
    distill_temp: Annotated[float, typer.Option(help="Distillation temperature T.")] = 2.0,
    teacher: Annotated[Optional[Path], typer.Option(help="Float checkpoint to distill from (default: the float weights QAT starts from).")] = None,
    equalize: EqualizeOpt = 0.0,
    ema: Annotated[float, typer.Option(help="Also score an exponential moving average of the weights with this decay each epoch, e.g. 0.999 (0 = off); the better of live and averaged is kept.")] = 0.0,
    ranges: Annotated[str, typer.Option(help="config: the config's range policies | calibrated: the activation (and float input) range policies of least integer loss on the calibration sequences, so that rare large values need not set the scale (float checkpoint).")] = "config",
    as_json: JsonOpt = False,
):
    """Quantization-aware training through the quantized recurrence; keeps the best integer validation accuracy."""
    check_seed_threads(seed)  # before Torch is imported
    from intssm.integer.score import int_accuracy
    from intssm.training import qat

    args = qat.QATArgs(param=param, epochs=epochs, batch_size=batch_size, lr=lr, warmup=warmup, limit=limit, val_limit=val_limit, seed=seed,
                       max_minutes=max_minutes, distill=distill, distill_temp=distill_temp, ema=ema, config=config,
                       calib=calib, equalize=equalize, teacher=teacher, ranges=ranges)
    args.check()
    _small_torch_ops()
    r = qat.run(ckpt, out, args, int_accuracy, progress=not as_json, on_epoch=lambda rec: err.print(json.dumps(rec), soft_wrap=True),
                on_warning=lambda w: err.print(f"warning: {w}", soft_wrap=True, markup=False))
    history, best_acc, best_ep = r["history"], r["best_val_int_acc"], r["epoch"]
    if r["interrupted"] is not None:
        raise Interrupted(f"interrupted in epoch {r['interrupted']}: saved {out} with the best integer model so far "
                          f"(epoch {best_ep}" + (f", validation accuracy {best_acc:.4f})" if best_acc is not None else ")")
                          + ", marked interrupted")
    which = " (averaged weights)" if r["kept"] == "val_int_acc_ema" else ""
    tr_acc = history[-1].get("train_int_acc")
    txt = (f"saved {out} (no validation split: last epoch {best_ep} kept"
           + (f"; integer accuracy {tr_acc:.4f} on the training sequences)" if tr_acc is not None else ")") if best_acc is None else
           f"saved {out} (best integer validation accuracy {best_acc:.4f} at epoch {best_ep}{which})")
    txt += _stopped_words(history[1:], r["args"].epochs)
    _emit({"out": str(out), "history": history, "best_val_int_acc": best_acc, "checks": r["checks"], "warnings": r["warnings"]}, as_json, txt)


@app.command()
def search(
    ckpt: Annotated[Path, typer.Argument(help="Float checkpoint (.pt).")],
    min_accuracy: Annotated[float, typer.Option(help="Floor on integer validation accuracy (0..1).")] = 0.97,
    start: Annotated[str, typer.Option(help="Start configuration (preset or JSON file).")] = "w8a8-state12",
    val_limit: Annotated[int, typer.Option(help="Validation sequences scoring each candidate.")] = 2000,
    calib: Annotated[int, typer.Option(help="Calibration sequences (ranges are calibrated once).")] = 256,
    qat_steps: Annotated[int, typer.Option(help="Discrete-Abar QAT steps (batch 64) fine-tuning each candidate before scoring.")] = 0,
    qat_lr: Annotated[float, typer.Option(help="Learning rate of that fine-tuning.")] = 3e-5,
    groups: Annotated[Optional[str], typer.Option(help="Comma-separated groups to lower (default all): " + ", ".join(["Abar", "x", "B", "C", "D", "enc_w", "mix_w", "dec_w", "h", "y", "act", "glu", "sig", "pool"]))] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for points.jsonl, front.json, trace.json, best.json, pareto.png.")] = Path("runs/search"),
    workers: Annotated[int, typer.Option(help="Parallel candidates (local processes or Ray CPUs).")] = 2,
    executor: Annotated[str, typer.Option(help="local | ray.")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: a local Ray instance).")] = None,
    test: Annotated[bool, typer.Option(help="Also score the chosen configuration on the full test set.")] = True,
    equalize: EqualizeOpt = 0.0,
    val_fraction: ValFracOpt = None,
    as_json: JsonOpt = False,
):
    """Mixed-precision search: the least-memory bit allocation whose integer validation accuracy stays above the floor."""
    from intssm.search import GROUPS, SearchOptions, run

    gs = tuple(g.strip() for g in groups.split(",")) if groups else tuple(GROUPS)
    opts = SearchOptions(ckpt=ckpt, out=out, min_accuracy=min_accuracy, start=start, val_limit=val_limit, calib=calib,
                         qat_steps=qat_steps, qat_lr=qat_lr, groups=gs, workers=workers, executor=executor,
                         ray_address=ray_address, test=test, equalize=equalize, val_fraction=val_fraction)
    _small_torch_ops()
    res = run(opts, on_round=lambda r: err.print(f"  {r['move']:6s} -> {r['bytes']:8.0f} B  val {r['accuracy']:.4f}   {r['signature']}"))
    b = res["best"]
    human = (f"scored {res['scored']} configurations in {res['seconds']} s; least memory at val >= {min_accuracy}: "
             f"{b['signature']}\n  {b['bytes']:.0f} B ({b['reduction']:.2f}x vs float32), val {b['accuracy']:.4f}"
             + (f", test {b['test_accuracy']:.4f}" if "test_accuracy" in b else "") + f"\n  config: {out / 'best.json'}; front: {out / 'pareto.png'}"
             + (f"\n  chosen for the equalized model ({res['equalized_checkpoint']}); quantize with: {res['ptq_command']}" if equalize else ""))
    _emit(res, as_json, human)


@app.command("export")
def export_(
    ckpt: Annotated[Path, typer.Argument(help="Quantized (or float: default PTQ) checkpoint.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Integer artifact (.npz) to write.")],
    as_json: JsonOpt = False,
):
    """Write the integer-only model: integer arrays, multipliers, shifts, LUTs and a JSON manifest."""
    from intssm import deploy

    _small_torch_ops()
    res, text = deploy.export_artifact(ckpt, out)
    _emit(res, as_json, text)


@app.command("export-c")
def export_c(
    model: Annotated[Path, typer.Argument(help="Quantized/float checkpoint or integer artifact (.npz).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the C files into.")],
    target: Annotated[str, typer.Option(help="host (write the C only) | cortex-m4 | cortex-m3 | cortex-m0plus | riscv32 "
                                             "(rv32imc): also cross-compile, "
                                             "run test sequences in the emulator, require the simulator's integers, "
                                             "and measure bytes, instructions and cycles per step.")] = "host",
    sequences: Annotated[int, typer.Option(help="Test sequences the emulated target must reproduce bit for bit.")] = 200,
    count_steps: Annotated[int, typer.Option(help="Time steps over which instructions and cycles are counted.")] = 64,
    compare: Annotated[bool, typer.Option(help="Also measure the float32 model in C on a Cortex-M4F, a Cortex-M3 and a "
                                               "Cortex-M0+ (software float), and the integer build on the other core.")] = False,
    report: Annotated[bool, typer.Option(help="Write the measurements to DIR/<target>/report.json.")] = False,
    state_layout: Annotated[str, typer.Option(help="packed: the state at its bit widths (the accounted bytes); halves: "
                                                   "Re and Im as 16-bit halves of a word, which the Cortex-M4's dual "
                                                   "multiplies read directly (faster with complex_scale shared; more RAM); "
                                                   "folded: halves, and the per-mode weights folded with their multipliers "
                                                   "into 32-bit words (fastest; several times the flash).")] = "packed",
    prefix: Annotated[str, typer.Option(help="Name space of the export: every symbol, type and macro starts with "
                                             "PREFIX_ (PREFIX_ in capitals for macros), the files are PREFIX_model.h/.c; "
                                             "models with different prefixes link into one program.")] = "intssm",
    adc_scale: Annotated[str, typer.Option(help="For a model of float data: the scale of int16 ADC codes, one float32 "
                                                "per input channel (comma-separated) or one for all; adds "
                                                "PREFIX_input_codes_adc (codes -> input codes, exactly).")] = "",
    as_json: JsonOpt = False,
):
    """Write the integer model as C99 (intssm_model.h/.c, example main.c), bit-exact with the simulator;
    with --target, prove it on an emulated microcontroller and measure its cost there."""
    from intssm import deploy

    res, text, error = deploy.export_c(model, out, target, sequences, count_steps, compare, report, state_layout, prefix,
                                       adc_scale, show=not as_json)
    _emit(res, as_json, text)
    if error:
        raise IntssmError(error)


@app.command("export-rtl")
def export_rtl(
    model: Annotated[Path, typer.Argument(help="Quantized/float checkpoint or integer artifact (.npz).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the Verilog, ROM files and rtl.json into.")],
    lanes: Annotated[int, typer.Option(help="Multipliers run over the complex modes in lockstep (must divide d_state/2); "
                                            "one scalar multiplier runs the other sites.")] = 8,
    synth: Annotated[bool, typer.Option(help="Also synthesize for the iCE40 UP5K (yosys synth_ice40 -dsp), place and "
                                             "route (nextpnr-ice40 --up5k) and count generic gates (yosys synth; stat).")] = False,
    report: Annotated[bool, typer.Option(help="With --synth: write the figures to DIR/report.json.")] = False,
    as_json: JsonOpt = False,
):
    """Write the integer model as synthesizable Verilog (docs/hardware.md), bit-exact with the simulator."""
    from intssm import deploy

    res, text = deploy.export_rtl(model, out, lanes, synth, report)
    _emit(res, as_json, text)


@app.command("cosim")
def cosim_(
    rtl_dir: Annotated[Path, typer.Argument(help="Directory written by export-rtl (rtl.json and the ROM files).")],
    dut: Annotated[Optional[list[Path]], typer.Option("--dut", help="Verilog file of the design under test (repeat for "
                                                                     "several); default: the generated design in RTL_DIR.")] = None,
    model: Annotated[Optional[Path], typer.Option(help="The model RTL_DIR was generated from (default: the shipped model).")] = None,
    seq: ModelSeqOpt = None,
    split: Annotated[str, typer.Option(help="test | val | train.")] = "test",
    limit: Annotated[int, typer.Option("--limit", help="Sequences to run.")] = 200,
    simulator: Annotated[str, typer.Option(help="verilator | icarus.")] = "verilator",
    top: Annotated[str, typer.Option(help="Top module of the design under test.")] = "intssm_top",
    as_json: JsonOpt = False,
):
    """Run a design with the documented ports (docs/hardware.md) on real sequences and require the
    simulator's logits, saturation counters and final state; names the first difference."""
    from intssm import deploy

    _check_limit(limit)
    res, text, error = deploy.cosim(rtl_dir, model or DEFAULT_QUANT_CKPT, dut, seq, split, limit, simulator, top)
    _emit(res, as_json, text)
    if error:
        raise IntssmError(error)


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="Integer artifact (.npz).")],
    as_json: JsonOpt = False,
):
    """Table of the artifact's tensors: shape, bits, scale, code range."""
    from intssm import modelinfo

    res, text = modelinfo.inspect(model)
    _emit(res, as_json, text)


@app.command()
def simulate(
    model: Annotated[Optional[Path], typer.Argument(help="Quantized/float checkpoint or .npz (default: the shipped model).")] = None,
    seq: ModelSeqOpt = None,
    other_data: OtherDataOpt = False,
    split: Annotated[str, typer.Option(help="test | val | train.")] = "test",
    limit: LimitOpt = None,
    verify_: Annotated[str, typer.Option("--verify", help="Sequences checked against the Torch quantized model: N or 'all'.")] = "256",
    trace: Annotated[Optional[Path], typer.Option(help="Write the integer state trace (x_re, x_im codes per step) of one sequence (.npz).")] = None,
    trace_index: Annotated[int, typer.Option(help="Which sequence --trace records (0-based, in the split).")] = 0,
    logits_out: Annotated[Optional[Path], typer.Option("--logits", help="Write golden vectors (.npz): integer logits, predictions, labels, lengths and per-sequence saturation counters.")] = None,
    as_json: JsonOpt = False,
):
    """Run the integer simulator on a dataset; verify it bit for bit against the Torch quantized model."""
    from intssm import verify

    _check_limit(limit)
    n_verify = verify.parse_verify(verify_)
    if n_verify != 0:
        _small_torch_ops()
    res, text, error = verify.simulate(model or DEFAULT_QUANT_CKPT, seq, other_data, split, limit, n_verify, trace,
                                       trace_index, logits_out, show=not as_json, note=_note,
                                       loading=lambda: _kernels_status(not as_json))
    _emit(res, as_json, text)
    if error:
        raise IntssmError(error)


@app.command()
def memory(
    model: Annotated[Optional[Path], typer.Argument(help="Checkpoint or .npz (default: the shipped model).")] = None,
    as_json: JsonOpt = False,
):
    """Exact memory of the integer model (flash: constants; RAM: state and buffers) vs float32."""
    from intssm import modelinfo

    _small_torch_ops()
    res, text = modelinfo.memory(model or DEFAULT_QUANT_CKPT)
    _emit(res, as_json, text)


@app.command()
def profile(
    model: Annotated[Optional[Path], typer.Argument(help="Checkpoint or .npz (default: the shipped model).")] = None,
    seq: ModelSeqOpt = None,
    limit: Annotated[int, typer.Option("--limit", help="Sequences simulated to measure saturation rates (0: none).")] = 100,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG bar chart of operations and bits per part.")] = None,
    as_json: JsonOpt = False,
):
    """Exact integer work of one recurrent step (by kind and width), traffic, energy vs float32, saturation rates."""
    from intssm import modelinfo

    _small_torch_ops()
    res, text = modelinfo.profile(model or DEFAULT_QUANT_CKPT, seq, limit, plot, show=not as_json,
                                  loading=lambda: _kernels_status(not as_json))
    _emit(res, as_json, text)


def _note(line: str) -> None:
    """A remark of a library function, on stderr (never on stdout, which carries ``--json``)."""
    err.print(line, markup=False, highlight=False)


def _stopped_words(history: list, epochs: int) -> str:
    """A stop by the time budget or by early stopping, in words (the per-epoch record's
    ``stopped`` / ``early_stop`` field)."""
    r = next((h for h in history if h.get("stopped")), None)
    if r is not None:
        return f"\nstopped by the {r['stopped']} in epoch {r['epoch']} of {epochs} (--max-minutes)"
    r = next((h for h in history if h.get("early_stop")), None)
    return "" if r is None else f"\nearly stop in epoch {r['epoch']} of {epochs}: {r['early_stop']}"


def main():
    """Entry point: the app under :func:`intssm.stops.run` (error lines, exit codes, signals)."""
    from intssm.stops import run

    run(app)


if __name__ == "__main__":  # python -m intssm.cli, as python -m intssm
    main()
