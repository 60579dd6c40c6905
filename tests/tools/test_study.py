"""The paper-study runner (tools/reproduce_paper.py): what its QAT parts run, and a tiny sweep end to end."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from conftest import load_tool
from intssm.training import checkpoint
from intssm.training.model import PRESETS, S4DModel

ROOT = Path(__file__).resolve().parents[2]


def _study():
    return load_tool("reproduce_paper")


def test_part_e_varies_abar_alone_with_a_12_bit_state():
    """Part e: every parameterisation at every Abar width, Abar real and imaginary alike, the state at 12
    bits per head; part c moves Abar and x together."""
    runs = _study()._configs(["c", "e"])
    e = [(n, q) for p, n, q in runs if p == "e"]
    assert sorted({n.split()[0] for n, _ in e}) == ["continuous", "discrete", "frozen"]
    assert sorted({q.A_re.bits for _, q in e}) == [5, 6, 7, 8, 10]
    for n, q in e:
        assert n.endswith(f" A{q.A_re.bits}") and q.A_im.bits == q.A_re.bits
        assert q.x_re.bits == q.x_im.bits == 12 and q.x_re.per_channel
    for p, n, q in runs:
        if p == "c":
            assert q.x_re.bits == q.A_re.bits and n.endswith(f" Ax{q.A_re.bits}")


def test_tiny_qat_sweep_writes_one_row_per_seed_and_a_plot(tmp_path):
    """A two-seed part-e sweep of one configuration on a tiny model: one CSV row per seed, named apart,
    with bits parsed from the run name (not the seed), accuracies in [0, 1], and the PNG."""
    ck = tmp_path / "tiny.pt"
    checkpoint.save(ck, S4DModel(PRESETS["tiny"], seed=0), dataset={"seq": "smnist"})
    out = tmp_path / "study"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "reproduce_paper.py"), "--models", f"d16={ck}",
                        "--parts", "e", "--only", "^discrete A6", "--limit", "20", "--calib", "8", "--qat-limit", "16",
                        "--qat-seeds", "2", "--workers", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "qat.csv")))
    assert sorted(x["name"] for x in rows) == ["discrete A6", "discrete A6 seed1"]
    for x in rows:
        assert x["part"] == "e" and x["bits"] == "6" and x["param"] == "discrete"
        assert 0.0 <= float(x["accuracy"]) <= 1.0 and 0.0 <= float(x["ptq_accuracy"]) <= 1.0
    assert (out / "qat_abar_bits.png").stat().st_size > 0
