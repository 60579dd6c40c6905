"""Hostile checkpoints and options: one `error:` line, exit 2, no traceback, bounded memory, the
input untouched. (Hostile integer artifacts: tests/integer/test_export.py; datasets: tests/data/test_data.py,
tests/data/test_own_data.py; configs: tests/datapath/test_config.py.)"""

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "data" / "checkpoints" / "japanesevowels-fp32.pt"
PEAK_RSS_LIMIT_KB = 1_200_000  # an interpreter with Torch and Numba is ~0.5 GB; the files below ask for terabytes


def _ck(**change):
    ck = torch.load(SRC, weights_only=True)
    for k, v in change.items():
        if k.startswith("mc_"):
            ck["model_config"] = dict(ck["model_config"], **{k[3:]: v})
        else:
            ck[k] = v
    return ck


CASES = {
    "huge_d_state": (lambda: _ck(mc_d_state=10**8), "d_state = 100000000 exceeds intssm's limit"),
    "huge_d_model": (lambda: _ck(mc_d_model=10**5), "d_model = 100000 exceeds intssm's limit"),
    "huge_layers": (lambda: _ck(mc_n_layers=10**6), "n_layers = 1000000 exceeds intssm's limit"),
    "huge_product": (lambda: _ck(mc_d_model=4096, mc_n_layers=64), "weights per array exceeds intssm's limit"),
    "dataset_string": (lambda: _ck(dataset="data/uea/JapaneseVowels"), "entry 'dataset' must be a dictionary"),
    "qspec_list": (lambda: _ck(qspec=[1, 2]), "entry 'qspec' must be a dictionary"),
    "model_config_list": (lambda: _ck(model_config=[16, 64]), "lacks 'model_config'"),
    "bool_size": (lambda: _ck(mc_d_model=True), "d_model must be a positive integer"),
}


def _run(*args):
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen([sys.executable, "-m", "intssm", *map(str, args)], stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), err.read().decode(), usage.ru_maxrss


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_checkpoint_refused(tmp_path, name):
    """A crafted checkpoint is refused by simulate with exactly one error line naming the fault,
    exit 2, under the peak-RSS limit, and the file is left unchanged."""
    make, fragment = CASES[name]
    bad = tmp_path / f"{name}.pt"
    torch.save(make(), bad)
    digest = hashlib.sha256(bad.read_bytes()).hexdigest()
    rc, err, rss = _run("simulate", bad, "--limit", "3")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], err[-1500:]
    assert rss < PEAK_RSS_LIMIT_KB, f"peak memory {rss} kB"
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("args,fragment", [
    (["qat", SRC, "-o", "{tmp}/q.pt", "--lr", "nan"], "finite"),
    (["train", "--seq", ROOT / "data" / "uea" / "JapaneseVowels", "-o", "{tmp}/t.pt", "--max-minutes", "inf"], "finite"),
    (["simulate", SRC, "--trace", "{tmp}/missing/dir/t.npz", "--trace-index", "-1"], "--trace-index must be >= 0"),
])
def test_hostile_options_refused(tmp_path, args, fragment):
    """A hostile option value is refused with exit 2, no traceback, and a message naming the option."""
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in args]
    rc, err, _ = _run(*args)
    assert rc == 2 and "Traceback" not in err and fragment in err, err[-1500:]
