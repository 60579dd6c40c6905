"""How a command ends: its exit code and its last line on stderr.

:func:`run` runs the Typer app: an :class:`~intssm.errors.IntssmError` (and a failed write, a file
nested too deeply, running out of memory, a usage error) becomes one ``error:`` line and exit code
2; Ctrl-C exits 130 and SIGTERM 143, after the running command has saved its work (a second one
within :data:`STOP_GRACE_S` is ignored, so a quick double Ctrl-C does not abandon the save).
Directories a refused command created are removed.
"""

from __future__ import annotations

import sys
import time

import typer
from rich.console import Console

from intssm.errors import IntssmError, Interrupted

err = Console(stderr=True)


_SIGNAL_EXIT = {"code": 130}  # 130 after SIGINT (Ctrl-C), 143 after SIGTERM


STOP_GRACE_S = 60.0  # after the first Ctrl-C / SIGTERM, further ones are ignored this long (the command is saving)
_STOPPING = {"since": None}


def _on_signal(signum, frame):
    """Ctrl-C and SIGTERM: the first raises KeyboardInterrupt (the running command saves its work;
    SIGTERM then exits 143). Further ones within :data:`STOP_GRACE_S` are ignored, so a quick double
    Ctrl-C does not abandon the save; after that another one interrupts again."""
    import signal

    since = _STOPPING["since"]
    if since is not None and time.monotonic() - since < STOP_GRACE_S:
        return
    _STOPPING["since"] = time.monotonic()
    if signum != signal.SIGINT:
        _SIGNAL_EXIT["code"] = 143
    raise KeyboardInterrupt


def _fail(msg: str):
    from intssm.outputs import remove_created_dirs

    remove_created_dirs()
    err.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(2)


def run(app):
    """Run the Typer ``app``, turning :class:`IntssmError` into one line and exit code 2; so are
    a failed write (a full disk), a file too deeply nested to parse, and running out of memory."""
    import signal

    from intssm.outputs import remove_created_dirs, write_failure

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        rc = app(standalone_mode=False)
    except Interrupted as e:
        remove_created_dirs()
        _exit_interrupted(str(e))
    except IntssmError as e:
        _fail(str(e))
    except MemoryError:
        _fail("out of memory: the input asks for more memory than this machine has; use smaller data (--limit) or a smaller model")
    except RecursionError:
        _fail("an input is nested too deeply to read")
    except (OSError, RuntimeError) as e:
        why = write_failure(e)
        if why is None:
            raise
        _fail(f"a write failed ({why}): {str(e)[:200]}")
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        remove_created_dirs()
        _exit_interrupted()
    except Exception as e:  # click (typer's bundled copy) usage errors: format_message + exit_code
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            err.print(f"error: {e.format_message()}", markup=False, highlight=False, soft_wrap=True)
            sys.exit(e.exit_code or 2)
        raise
    if isinstance(rc, int) and rc:  # Typer returns 130 for Ctrl-C when not in standalone mode
        if rc == 130:
            _exit_interrupted()
        sys.exit(rc)


def _exit_interrupted(msg: str = "interrupted"):
    """Exit 130 after Ctrl-C (143 after SIGTERM). A plain ``sys.exit(130)`` is not enough: an
    interrupt that lands in a native Torch call can leave the interpreter to end itself by SIGINT at
    shutdown (status -2), so the streams are flushed and the process ends here (outputs are written
    atomically: nothing is half-written)."""
    import os

    err.print(msg, markup=False, highlight=False, soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_SIGNAL_EXIT["code"])
