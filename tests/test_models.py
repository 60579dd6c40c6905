"""The curated model directory (intssm/models.py, data/checkpoints/MODELS.json, `intssm models`)."""

import json
import subprocess
import sys

import pytest

from intssm import models
from intssm.data import DATA_DIR


def test_registry_lists_every_curated_model():
    """MODELS.json lists exactly models.CURATED, in order; every entry's file exists, 0 < accuracy <= 1
    and bytes > 0."""
    entries = models.load_registry()
    assert [e["name"] for e in entries] == list(models.CURATED)
    for e in entries:
        assert (DATA_DIR.parent / e["file"]).is_file() or (DATA_DIR / e["file"].split("/", 1)[1]).is_file()
        assert 0 < e["accuracy"] <= 1 and e["bytes"] > 0


@pytest.mark.parametrize("name", ["basicmotions", "japanesevowels"])
def test_registry_numbers_are_measured(name):
    """The recorded accuracy and bytes are what measuring the model again gives."""
    rec = {e["name"]: e for e in models.load_registry()}[name]
    assert models.measure(name) == rec


def test_models_command_json():
    """`python -m intssm models --json` exits 0 and lists the curated models in registry order."""
    r = subprocess.run([sys.executable, "-m", "intssm", "models", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [m["name"] for m in out["models"]] == list(models.CURATED)
