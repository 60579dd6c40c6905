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


@pytest.mark.parametrize("name", ["basicmotions", "japanesevowels", "japanesevowels-fit"])
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


@pytest.mark.parametrize("name", ["japanesevowels-fit", "italypowerdemand-fit"])
def test_fit_models_match_their_cards(name):
    """A shipped `intssm fit` model's registry entry says what its model card (NAME.card.json, written
    by the fit run) measured: the same test accuracy, deployed bytes and config, every test sequence
    bit-exact, and the run's status done."""
    import json

    rec = {e["name"]: e for e in models.load_registry()}[name]
    card = json.loads((DATA_DIR / "checkpoints" / f"{name}.card.json").read_text())
    v = card["stages"]["verify"]
    assert card["status"] == "done" and card["dataset"]["seq"].endswith(rec["dataset"].split("/")[-1])
    assert v["results"]["test"]["int_acc"] == rec["accuracy"] and v["results"]["test"]["n"] == rec["n_test"]
    assert v["results"]["test"]["bit_exact"] == rec["n_test"]
    assert v["memory"]["deployed_bytes"] == rec["deployed_bytes"]
