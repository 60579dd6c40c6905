"""Running the command line in a subprocess, as a user does, for the tests that need a real
process: exit codes from ``intssm.cli.main``, signals, peak memory, a fresh interpreter."""

import json
import os
import subprocess
import sys

ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="80")


def intssm(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "intssm", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=timeout)


def ok_json(r) -> dict:
    """Exit 0, no traceback, exactly one JSON object on stdout."""
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    out = json.loads(lines[0])
    assert isinstance(out, dict)
    return out


def assert_clean_error(r, fragment: str):
    """Exit 2 (as cli.py documents), exactly one stderr line 'error: ...' containing ``fragment``,
    no traceback, nothing on stdout."""
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:"), r.stderr
    assert fragment in lines[0], r.stderr
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == ""
