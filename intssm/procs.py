"""Running external tools (compilers, disassemblers): with a time limit, in their own process
group, their output checked before use.

:func:`run` starts the tool in a new session (its own process group), waits at most
:func:`timeout_s` seconds (``$INTSSM_TOOL_TIMEOUT``, default 600), and on a timeout, Ctrl-C or
SIGTERM kills the whole group (a compiler's ``cc1`` and ``as`` children too) before going on: no
orphan keeps running. A tool that cannot start, times out or exits non-zero is one
:class:`~intssm.errors.IntssmError`. What a tool writes is the caller's to check; :func:`check_elf`
checks a linked ELF before anything loads it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from intssm.errors import IntssmError

DEFAULT_TIMEOUT_S = 600.0


def timeout_s() -> float:
    """The time limit of one tool run: ``$INTSSM_TOOL_TIMEOUT`` seconds (a positive number), else 600."""
    v = os.environ.get("INTSSM_TOOL_TIMEOUT")
    if not v:
        return DEFAULT_TIMEOUT_S
    try:
        t = float(v)
    except ValueError:
        t = -1.0
    if not 0 < t < 1e9:
        raise IntssmError(f"INTSSM_TOOL_TIMEOUT must be a positive number of seconds, got {v!r}")
    return t


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    p.wait()


def run(cmd: list, cwd=None, what: str | None = None, check: bool = True,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` (module docstring); returns the completed process (stdout, stderr as text).
    Raises IntssmError when it cannot start, runs past the limit (``timeout`` seconds, else
    :func:`timeout_s`) or, with ``check``, exits non-zero; ``check=False`` leaves the exit status
    to the caller, which reports it in its own words."""
    name = what or Path(str(cmd[0])).name
    limit = timeout if timeout is not None else timeout_s()
    try:
        p = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, errors="replace", start_new_session=True)
    except OSError as e:
        raise IntssmError(f"{name} could not be started ({e.strerror}); is the toolchain installed?") from None
    try:
        out, err = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_group(p)
        raise IntssmError(f"{name} did not finish within {limit:g} s and was stopped (with its child processes); "
                          "set INTSSM_TOOL_TIMEOUT to allow longer") from None
    except BaseException:  # Ctrl-C / SIGTERM: the tool's whole process group goes too
        _kill_group(p)
        raise
    if check and p.returncode != 0:
        said = [ln.strip() for ln in (err or out or "").splitlines() if ln.strip()][-10:]
        tail = " | ".join(said)[-2000:]  # the tool's last lines, on the one error line
        raise IntssmError(f"{name} failed (exit {p.returncode})" + (f": {tail}" if tail else " without a message"))
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def check_elf(path: Path, tool: str, machine: str = "EM_ARM", symbols: tuple = ()) -> Path:
    """``path`` must be an ELF file for ``machine`` with a symbol table holding ``symbols``, as
    ``tool`` should have written it: a tool that exits 0 without writing its output, or writes
    something else, is refused here, before anything loads the file."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError:
        raise IntssmError(f"{tool} exited 0 but did not write {p}; the toolchain is broken") from None
    if head != b"\x7fELF":
        raise IntssmError(f"{tool} exited 0 but {p} is not an ELF file; the toolchain is broken")
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(p, "rb") as f:
            ef = ELFFile(f)
            got = ef["e_machine"]
            tab = ef.get_section_by_name(".symtab")
            names = {s.name for s in tab.iter_symbols()} if tab is not None else set()
            list(ef.iter_segments())
    except (ELFError, ValueError, KeyError, OSError, AssertionError) as e:  # pyelftools on damaged files
        raise IntssmError(f"{tool} exited 0 but {p} is not a readable ELF file ({type(e).__name__}); the toolchain is broken") from None
    if got != machine:
        raise IntssmError(f"{tool} wrote {p} for machine {got}, expected {machine}; wrong toolchain on PATH?")
    missing = [s for s in symbols if s not in names]
    if missing:
        raise IntssmError(f"{tool} wrote {p} without the symbols {missing}; the toolchain is broken")
    return p
