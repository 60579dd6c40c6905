"""Where commands write: outputs checked before any work, written atomically, never over an input.

The convention, for every command and tool:

* every output path is checked before the work starts (:func:`check_file`, :func:`check_dir`): a
  file output must not be a directory, must not be one of the command's inputs (the same file under
  any name), and its directory must be writable (created if missing);
* every file is written to a temporary file beside it and renamed over the target
  (:func:`atomic`), so a crash, a full disk or Ctrl-C leaves either the old file or the new one,
  never half of one;
* an existing output is replaced, and the command says so on stderr (``replacing PATH``); a file
  the user may have edited that intssm only creates as an example (export-c's ``main.c``) is kept;
* only regular files are written: an existing output that is a device (``/dev/null``), a FIFO or
  a socket is refused before the work starts (:func:`check_file`); a replaced file keeps its
  permission bits, a new one gets ``0666`` less the umask, as any other tool's output;
* a write that fails (a full disk, a file-size limit, a read-only file system) is one
  :class:`IntssmError` naming the file and the reason, with the temporary file removed and the
  old file untouched (:func:`atomic`);
* a set of files that belong together (export-c's header and source) is written all or nothing
  (:func:`write_texts`): every file to a temporary first, the renames only once all are written;
* a directory a check created and the command then left empty (a refusal, a failure) is removed
  at exit (:func:`remove_created_dirs`, called by the CLI);
* once a save has begun, Ctrl-C and SIGTERM wait for it: they are held until the file is renamed
  into place (:func:`atomic`), then delivered.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from intssm.errors import IntssmError


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


_CREATED: list = []  # directories a check created: removed at exit if still empty (remove_created_dirs)


def _mkdirs(d: Path) -> None:
    """``mkdir -p d``, remembering each directory it creates."""
    missing = []
    q = d
    while not q.exists() and q != q.parent:
        missing.append(q)
        q = q.parent
    d.mkdir(parents=True, exist_ok=True)
    _CREATED.extend(reversed(missing))


def remove_created_dirs() -> None:
    """Remove the directories the checks created that are still empty (innermost first): a refused
    or failed command leaves no empty output directory behind."""
    for d in reversed(_CREATED):
        try:
            d.rmdir()
        except OSError:
            pass  # not empty (the command wrote there) or already gone
    _CREATED.clear()


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _check_regular(p: Path, what: str) -> None:
    """An existing output (after symlinks) must be a regular file: intssm replaces files by rename,
    and renaming over a device or a FIFO would replace the device node itself."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return
    except OSError as e:
        raise IntssmError(f"{what}: cannot inspect {p} ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise IntssmError(f"{what} {p} is {_kind(st.st_mode)}, not a regular file; intssm writes only regular files: "
                          "give a file path")


def _writable_dir(d: Path, what: str) -> None:
    try:
        _mkdirs(d)
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
    _check_regular(p, what)
    if suffix is not None and p.suffix != suffix:
        raise IntssmError(f"{what} must end in {suffix}, got {p}")
    for i in inputs:
        if i is not None and (_same(p, Path(i)) or p.resolve() == Path(i).resolve()):
            raise IntssmError(f"{what} {p} is also an input of this command; write to another file")
    _writable_dir(p.parent if str(p.parent) else Path("."), what)
    return p


def check_dir(path, inputs=(), what: str = "output directory", writes=()) -> Path:
    """Check an output directory before any work (created if missing). No input may be the
    directory, nor any file the command writes in it (``writes``: names relative to it, e.g.
    ``intssm_model.c``), under any name; those files must be regular files or absent."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise IntssmError(f"{what} {d} exists and is not a directory")
    for i in inputs:
        if i is None:
            continue
        if _same(d, Path(i)):
            raise IntssmError(f"{what} {d} is also an input of this command")
        for name in writes:
            if _same(d / name, Path(i)) or (d / name).resolve() == Path(i).resolve():
                raise IntssmError(f"{what} {d}: the command writes {d / name}, which is its input {i}; "
                                  "move the input or write to another directory")
    for name in writes:
        _check_regular(d / name, what)
    _writable_dir(d, what)
    return d


def _say_replacing(p: Path, quiet: bool) -> None:
    if p.exists() and not quiet:
        print(f"replacing {p}", file=sys.stderr)


#: errno values of a write that failed for lack of room or permission (reported, never a traceback)
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


_TORCH_WRITE_ERRORS = ("inline_container", "iostream error", "file write failed", "pytorchstreamwriter")


def write_failure(e: BaseException) -> str | None:
    """The reason of a failed write, if ``e`` is one: an OSError with a :data:`WRITE_ERRNOS` errno
    (also as the cause or context of another exception), or the RuntimeError Torch's zip writer
    raises on a short write (which drops the errno)."""
    seen = 0
    x = e
    while x is not None and seen < 8:
        if isinstance(x, OSError) and x.errno in WRITE_ERRNOS:
            return x.strerror or os.strerror(x.errno)
        x = x.__cause__ or x.__context__
        seen += 1
    if isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _TORCH_WRITE_ERRORS):
        return "the write failed: a full disk or a file-size limit"
    return None


def _new_mode(p: Path) -> int:
    """Permission bits for ``p``: those of the file it replaces, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(p).st_mode)
    except OSError:
        um = os.umask(0)
        os.umask(um)
        return 0o666 & ~um


_HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _signals_held():
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver the first one that came to the
    handler that was in place. The Python-level handlers are swapped (not the thread's signal
    mask), so a signal that the kernel hands to another thread (Torch's pool) is held too; only the
    main thread may change handlers, elsewhere nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list = []
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in _HELD}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if pending:
            s, h = pending[0], old[pending[0]]
            if callable(h):
                h(s, None)
            elif h == signal.SIG_DFL:
                os.kill(os.getpid(), s)


@contextmanager
def atomic(path, quiet: bool = False):
    """Yields a temporary path beside ``path`` (same suffix, so writers that choose a format by
    extension still do); on success it is renamed over ``path`` with the mode of the file it
    replaces, on any failure removed. A failed write (:func:`write_failure`) is an IntssmError;
    Ctrl-C and SIGTERM are held from the start of the write until the rename (module docstring)."""
    p = Path(path)
    with _signals_held():
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.stem}.", suffix=".tmp" + p.suffix)
            os.close(fd)
        except OSError as e:
            raise IntssmError(f"cannot write {p} ({e.strerror}); nothing was written") from None
        tmp = Path(tmp)
        try:
            yield tmp
            os.chmod(tmp, _new_mode(p))
            _say_replacing(p, quiet)
            os.replace(tmp, p)
        except (OSError, RuntimeError) as e:
            why = write_failure(e) or (e.strerror if isinstance(e, OSError) and e.strerror else None)
            if why is None:
                raise
            raise IntssmError(f"cannot write {p} ({why}); the temporary file was removed"
                              + (" and the existing file is unchanged" if p.exists() else "")) from None
        finally:
            tmp.unlink(missing_ok=True)


def write_text(path, text: str, quiet: bool = False) -> Path:
    with atomic(path, quiet) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_png(path, fig, quiet: bool = False, dpi: int = 110) -> Path:
    """Lay out matplotlib figure ``fig``, write it as a PNG (atomically) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic(path, quiet) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return Path(path)


def write_bytes(path, data: bytes, quiet: bool = False) -> Path:
    with atomic(path, quiet) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def rescue_dir() -> Path | None:
    """Where a command writes its result when the output cannot be written: ``$INTSSM_RESCUE_DIR``
    if set (the user's choice: nothing is written anywhere else unasked), else None."""
    d = os.environ.get("INTSSM_RESCUE_DIR")
    return Path(d) if d else None


def save_or_rescue(path, write, quiet: bool = False) -> Path:
    """``write(tmp)`` atomically to ``path``; if that fails and :func:`rescue_dir` is set, to a
    new file there instead, and the error says where the result went (it is still an error: the
    output the user named was not written)."""
    try:
        with atomic(path, quiet) as tmp:
            write(tmp)
        return Path(path)
    except IntssmError as e:
        d = rescue_dir()
        if d is None:
            raise IntssmError(f"{e} (set INTSSM_RESCUE_DIR to a directory on another disk to keep the result "
                              "when this happens)") from None
        p = Path(path)
        alt = d / f"{p.stem}.rescued-{os.getpid()}{p.suffix}"
        try:
            _mkdirs(d)
            with atomic(alt, quiet=True) as tmp:
                write(tmp)
        except (IntssmError, OSError) as e2:
            raise IntssmError(f"{e}; writing it to INTSSM_RESCUE_DIR failed too ({e2})") from None
        raise IntssmError(f"{e}; the result was saved to {alt} instead (INTSSM_RESCUE_DIR)") from None


def write_texts(files: dict, quiet: bool = False) -> list:
    """Write ``{path: text}`` all or nothing: every file to a temporary beside it first; only when
    all are written are they renamed into place (a rename needs no room on the disk). A failure
    removes every temporary and leaves every target as it was."""
    tmps = []
    with _signals_held():
        try:
            for path, text in files.items():
                p = Path(path)
                fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.stem}.", suffix=".tmp" + p.suffix)
                os.close(fd)
                tmps.append((Path(tmp), p))
                Path(tmp).write_text(text)
                os.chmod(tmp, _new_mode(p))
            for tmp, p in tmps:
                _say_replacing(p, quiet)
                os.replace(tmp, p)
        except OSError as e:
            why = write_failure(e) or e.strerror or type(e).__name__
            raise IntssmError(f"cannot write {', '.join(str(Path(f)) for f in files)} ({why}); none of them "
                              "was written") from None
        finally:
            for tmp, _ in tmps:
                tmp.unlink(missing_ok=True)
    return [Path(f) for f in files]
