"""Progress of long work, shown on stderr (never on stdout, which carries ``--json`` output)."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_err = Console(stderr=True)


@contextmanager
def progress_bar(desc: str, total: int, enabled: bool = True):
    """A rich progress bar on stderr; yields ``advance(n, info="")``. Disabled, it yields a no-op."""
    if not enabled:
        yield lambda n=1, **kw: None
        return
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*cols, console=_err, transient=False) as p:
        task = p.add_task(desc, total=total, info="")

        def advance(n=1, info: str = ""):
            p.update(task, advance=n, info=info)

        yield advance
