"""The ``intssm`` command line: thin commands that hand off to the library.

Every command accepts ``--json`` and then prints exactly one JSON object on stdout. Bad input
ends in one line on stderr (``error: ...``) and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import IntssmError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
SeqOpt = Annotated[str, typer.Option("--seq", help="smnist | psmnist | IDX directory | .npz file.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="Use only the first N sequences.")]

DEFAULT_FLOAT_CKPT = Path(__file__).resolve().parent.parent / "data" / "checkpoints" / "paper-small-fp32.pt"


def _emit(obj: dict, as_json: bool, human: str):
    if as_json:
        sys.stdout.write(json.dumps(obj) + "\n")
    else:
        typer.echo(human)


@contextmanager
def progress_bar(desc: str, total: int, enabled: bool = True):
    """A rich progress bar on stderr; yields ``advance(n, **fields)``."""
    if not enabled or not err.is_terminal and total < 0:
        yield lambda n=1, **kw: None
        return
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*cols, console=err, transient=False, disable=not enabled) as p:
        task = p.add_task(desc, total=total, info="")

        def advance(n=1, info: str = ""):
            p.update(task, advance=n, info=info)

        yield advance


def _check_limit(limit):
    if limit is not None and limit < 1:
        raise IntssmError(f"--limit must be a positive number of sequences, got {limit}")


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the checkpoint.")],
    preset: Annotated[str, typer.Option(help="Model preset: paper-small | base | tiny.")] = "paper-small",
    seq: SeqOpt = "smnist",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    batch_size: Annotated[int, typer.Option(help="Sequences per batch.")] = 128,
    lr: Annotated[float, typer.Option(help="Learning rate (non-SSM parameters).")] = 1e-2,
    ssm_lr: Annotated[float, typer.Option(help="Learning rate of dt, A, B (no weight decay).")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed for init, shuffling and dropout.")] = 0,
    limit: LimitOpt = None,
    threads: Annotated[int, typer.Option(help="Torch threads (0 = default).")] = 0,
    as_json: JsonOpt = False,
):
    """Train a float S4D in convolution mode; keeps the best-on-validation weights."""
    from . import checkpoint, data
    from .model import PRESETS, S4DModel, n_params
    from .train import TrainArgs, args_dict
    from .train import train as run_train

    _check_limit(limit)
    if preset not in PRESETS:
        raise IntssmError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if epochs < 1 or batch_size < 1 or lr <= 0 or ssm_lr <= 0:
        raise IntssmError("--epochs, --batch-size, --lr and --ssm-lr must be positive")
    args = TrainArgs(epochs=epochs, batch_size=batch_size, lr=lr, ssm_lr=ssm_lr, seed=seed, limit=limit, threads=threads)
    model = S4DModel(PRESETS[preset], seed=seed)
    n_train = len(data.load(seq, "train", limit))
    err.print(f"training {preset} ({n_params(model)} parameters) on {seq}: {n_train} sequences x {epochs} epochs")
    with progress_bar("train", epochs * n_train, enabled=not as_json) as adv:
        def on_step(ep, n, loss, acc):
            adv(n, info=f"ep {ep + 1} loss {loss:.3f} acc {acc:.3f}")

        def on_epoch(rec):
            err.print(json.dumps(rec))

        best, history = run_train(model, seq, args, on_step=on_step, on_epoch=on_epoch)
    model.load_state_dict(best)
    ds = data.load(seq, "test")
    checkpoint.save(out, model, metrics=history, dataset={"seq": seq, "checksum": ds.checksum},
                    train_args=args_dict(args) | {"preset": preset})
    best_rec = max(history, key=lambda r: r["val_acc"])
    _emit({"out": str(out), "best_epoch": best_rec["epoch"], "val_acc": best_rec["val_acc"], "history": history},
          as_json, f"saved {out} (best epoch {best_rec['epoch']}, val acc {best_rec['val_acc']:.4f})")


@app.command("eval")
def eval_(
    ckpt: Annotated[Path, typer.Argument(help="Float checkpoint (.pt).")] = DEFAULT_FLOAT_CKPT,
    seq: SeqOpt = "smnist",
    mode: Annotated[str, typer.Option(help="conv | recurrent.")] = "conv",
    split: Annotated[str, typer.Option(help="test | val | train.")] = "test",
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
):
    """Accuracy of a float checkpoint (convolution or recurrent mode)."""
    from . import checkpoint, data
    from .train import evaluate

    _check_limit(limit)
    if mode not in ("conv", "recurrent"):
        raise IntssmError(f"--mode must be conv or recurrent, got {mode!r}")
    model, _ = checkpoint.load(ckpt)
    ds = data.load(seq, split, limit)
    _check_input_dim(model.cfg.d_input, ds)
    t0 = time.time()
    with progress_bar(f"eval {mode}", len(ds), enabled=not as_json) as adv:
        acc, loss = evaluate(model, ds.as_float(), ds.y, mode=mode, progress=adv)
    dt = time.time() - t0
    _emit({"accuracy": acc, "loss": loss, "n": len(ds), "mode": mode, "seq": seq, "split": split,
           "seconds": dt, "sequences_per_s": len(ds) / dt}, as_json,
          f"{ds.name} {mode}: accuracy {acc:.4f} ({round(acc * len(ds))}/{len(ds)}), loss {loss:.4f}, {dt:.1f} s")


def _check_input_dim(d_input, ds):
    if ds.x.shape[-1] != d_input:
        raise IntssmError(f"dataset {ds.name} has {ds.x.shape[-1]} features per step, the model expects {d_input}")


def main():
    """Entry point: runs the app, turning :class:`IntssmError` into one line and exit code 2."""
    try:
        app(standalone_mode=False)
    except IntssmError as e:
        err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.ClickException):
            err.print(f"error: {e.format_message()}", markup=False, highlight=False)
            sys.exit(e.exit_code)
        raise
