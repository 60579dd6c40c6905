"""The Python API (intssm.api): the notebook path gives the simulator's integers and refuses what
the commands refuse."""

import subprocess
import sys

import numpy as np
import pytest

import intssm
from intssm import sources
from intssm.data import DATA_DIR
from intssm.errors import IntssmError

JV = DATA_DIR / "checkpoints" / "japanesevowels-hetero.pt"
JV_DATA = str(DATA_DIR / "uea" / "JapaneseVowels")
DEFAULT = DATA_DIR / "checkpoints" / "paper-small-hetero.pt"


def test_import_is_light():
    """`import intssm` loads neither Torch nor Numba; the API loads on first use."""
    code = "import sys, intssm; assert 'torch' not in sys.modules and 'numba' not in sys.modules; print(intssm.run.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "intssm.api"


def test_run_equals_torch_quantized_model_on_float_data():
    """intssm.run on raw float32 readings (the input quantizer inside) gives the Torch quantized
    model's logit codes, bit for bit, on variable-length JapaneseVowels test sequences."""
    m = intssm.load(JV, torch_model=True)
    ds = intssm.load_data(JV_DATA, "test", 40)
    r = intssm.run(m, ds.x, ds.lengths)
    ref = sources.torch_logits(m.qm, m.input_codes(ds), lengths=ds.lengths)
    assert r.logits.dtype == np.int64 and (r.logits == ref).all()
    assert (r.pred == r.logits.argmax(1)).all()
    assert set(r.saturations) == set(m.model.counters)
    assert (intssm.run(m.model, ds.x, ds.lengths).logits == r.logits).all()  # the IntModel itself runs too
    # float64 input is float32 first: the same codes, the same integers
    assert (intssm.run(m, ds.x.astype(np.float64), ds.lengths).logits == r.logits).all()


def test_run_refuses_what_the_model_cannot_run():
    """Wrong feature count, float data for a uint8 model, NaN, bad lengths, and a mean-pooling
    model given another length are IntssmErrors, never a wrong answer."""
    jv = intssm.load(JV)
    ds = intssm.load_data(JV_DATA, "test", 4)
    with pytest.raises(IntssmError, match="features"):
        intssm.run(jv, ds.x[:, :, :5], ds.lengths)
    bad = ds.x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(IntssmError, match="NaN"):
        intssm.run(jv, bad, ds.lengths)
    with pytest.raises(IntssmError, match="lengths"):
        intssm.run(jv, ds.x, ds.lengths + 100)
    with pytest.raises(IntssmError, match="uint8"):
        intssm.run(jv, (ds.x * 0).astype(np.uint8), ds.lengths)
    sm = intssm.load(DEFAULT)
    with pytest.raises(IntssmError, match="float data"):
        intssm.run(sm, np.zeros((1, 784), np.float32))
    with pytest.raises(IntssmError, match="784"):
        intssm.run(sm, np.zeros((1, 100), np.uint8))


def test_export_c_writes_the_model(tmp_path):
    """intssm.export_c writes the C header and source of the model."""
    paths = intssm.export_c(intssm.load(JV), tmp_path / "c")
    names = {p.name for p in paths}
    assert {"intssm_model.h", "intssm_model.c"} <= names
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
