"""Where commands write: outputs checked before any work, written atomically, never over an input.

The convention, for every command and tool:

* every output path is checked before the work starts (:func:`check_file`, :func:`check_dir`): a
  file output must not be a directory, must not be one of the command's inputs (the same file under
  any name), and its directory must be writable (created if missing);
* every file is written to a temporary file beside it and renamed over the target
  (:func:`atomic`), so a crash, a full disk or Ctrl-C leaves either the old file or the new one,
  never half of one;
* an existing output is replaced, and the command says so on stderr (``replacing PATH``); a file
  the user may have edited that intssm only creates as an example (export-c's ``main.c``) is kept.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from intssm.errors import IntssmError


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _writable_dir(d: Path, what: str) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise IntssmError(f"{what}: {d} exists and is not a directory") from None
    except OSError as e:
        raise IntssmError(f"{what}: cannot create directory {d} ({e.strerror})") from None
    if not d.is_dir():
        raise IntssmError(f"{what}: {d} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=d, prefix=".intssm-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise IntssmError(f"{what}: cannot write in {d} ({e.strerror})") from None


def check_file(path, inputs=(), what: str = "output", suffix: str | None = None) -> Path:
    """Check an output file before any work; returns it as a Path. ``inputs``: paths the command
    reads (None entries ignored); ``suffix``: the extension the file must have."""
    p = Path(path)
    if p.is_dir():
        raise IntssmError(f"{what} {p} is a directory; give a file name")
    if suffix is not None and p.suffix != suffix:
        raise IntssmError(f"{what} must end in {suffix}, got {p}")
    for i in inputs:
        if i is not None and (_same(p, Path(i)) or p.resolve() == Path(i).resolve()):
            raise IntssmError(f"{what} {p} is also an input of this command; write to another file")
    _writable_dir(p.parent if str(p.parent) else Path("."), what)
    return p


def check_dir(path, inputs=(), what: str = "output directory") -> Path:
    """Check an output directory before any work (created if missing); no input may be inside it
    under a name the command writes (callers pass those as ``inputs`` joined to the directory)."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise IntssmError(f"{what} {d} exists and is not a directory")
    for i in inputs:
        if i is not None and _same(d, Path(i)):
            raise IntssmError(f"{what} {d} is also an input of this command")
    _writable_dir(d, what)
    return d


def _say_replacing(p: Path, quiet: bool) -> None:
    if p.exists() and not quiet:
        print(f"replacing {p}", file=sys.stderr)


@contextmanager
def atomic(path, quiet: bool = False):
    """Yields a temporary path beside ``path`` (same suffix, so writers that choose a format by
    extension still do); on success it is renamed over ``path``, on any failure removed."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.stem}.", suffix=".tmp" + p.suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _say_replacing(p, quiet)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str, quiet: bool = False) -> Path:
    with atomic(path, quiet) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path, data: bytes, quiet: bool = False) -> Path:
    with atomic(path, quiet) as tmp:
        tmp.write_bytes(data)
    return Path(path)
