"""The integer model's layout (intssm.datapath.layout): one owner of names, shapes, rows and counters."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from intssm.datapath import layout
from intssm.datapath.inputq import RAW_UINT8
from intssm.datapath.intmodel import IntModel
from intssm.errors import IntssmError
from intssm.integer.export import integer_model
from intssm.training.model import ModelConfig, S4DModel
from intssm.training.ptq import ptq
from intssm.datapath.qspec import PRESETS


def _qm(cfg=ModelConfig(d_model=3, d_state=4, n_layers=2), qcfg=PRESETS["w8a8"]):
    m = S4DModel(cfg, seed=0).double()
    qm, _ = ptq(m, qcfg, torch.rand(3, 6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    return qm


def test_layout_matches_the_built_model():
    """Every array a quantized model exports is declared in the layout, in its shape; counters agree."""
    qm = _qm()
    arrays = integer_model(qm)
    assert set(arrays) == set(layout.NAMES)
    shapes = layout.expected_shapes(qm.dp.cfg, qm.dp.qcfg)
    assert {k: v.shape for k, v in arrays.items()} == shapes
    names = layout.counter_names(2)
    assert len(names) == layout.n_counters(2) == 13
    assert names[layout.layer_base(1) + layout.C_GLU] == "l1.glu"
    assert names[layout.head_base(2) + layout.C_LOGITS] == "logits"
    assert [layout.QRANGE_ROWS[r] for r in (layout.R_XRE, layout.R_LOGITS)] == ["x_re", "logits"]


def test_validate_accepts_a_built_model_and_reproves_it():
    """validate accepts the arrays of a PTQ-built model (bound proof included, no error) and returns
    the IntModel: all arrays int64 and read-only, the configs, seq_len and the identity input
    quantizer it was given none."""
    qm = _qm()
    a = layout.validate(integer_model(qm), qm.dp.cfg, qm.dp.qcfg, qm.dp.seq_len)
    assert isinstance(a, IntModel) and list(a.arrays) == list(layout.NAMES)
    assert all(v.dtype == np.int64 and not v.flags.writeable for v in a.arrays.values())
    assert (a.cfg, a.qcfg, a.seq_len, a.input) == (qm.dp.cfg, qm.dp.qcfg, qm.dp.seq_len, RAW_UINT8)
    assert a.counters == tuple(layout.counter_names(2)) and a.n_counters == 13
    assert set(a.site_bounds) == {"enc", "pool", "logits"} | {f"l{i}.{k}" for i in range(2) for k in
                                                                ("x_re", "x_im", "y", "glu", "h")}
    with pytest.raises(ValueError):
        a.arrays["enc_b"][0] = 1  # read-only
    with pytest.raises(TypeError):
        a.arrays["enc_b"] = a.arrays["enc_b"]  # a mapping proxy


@pytest.mark.parametrize("name,value,msg", [
    ("enc_b", 2**62, "enc_b: 32-bit bias outside"),
    ("A_re_z", 2**40, "A_re_z: zero point of the symmetric format A_re"),
    ("h_z", 1, "h_z: zero point of the symmetric format h"),
    ("x_re_S", 47, "x_re_S: shift outside [0, 46]"),
    ("glu_M", -1, "glu_M: 15-bit multiplier outside"),
    ("gelu_lut", 300, "gelu_lut: codes of the 8-bit format act outside"),
])
def test_validate_refuses_out_of_range_values(name, value, msg):
    """A value outside its declared width is refused before anything runs."""
    qm = _qm()
    arrays = integer_model(qm)
    arrays[name] = arrays[name].copy()
    arrays[name].flat[0] = value
    with pytest.raises(IntssmError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        layout.validate(arrays, qm.dp.cfg, qm.dp.qcfg, qm.dp.seq_len)


def test_validate_refuses_wrapping_uint64():
    """A uint64 value >= 2**63 is refused (naming 2**63) rather than wrapping to a negative int64."""
    qm = _qm()
    arrays = integer_model(qm)
    arrays["enc_b"] = arrays["enc_b"].astype(np.uint64)
    arrays["enc_b"][0] = np.uint64(2**63 + 7)
    with pytest.raises(IntssmError, match="2\\*\\*63"):
        layout.validate(arrays, qm.dp.cfg, qm.dp.qcfg, qm.dp.seq_len)


def _blank(cfg, qcfg) -> dict:
    """A model of zeros (codes, zero points, biases), unit multipliers and zero shifts: in range everywhere."""
    out = {}
    for spec in layout.ARRAYS:
        shape = layout.expected_shapes(cfg, qcfg)[spec.name]
        lo = getattr(qcfg, spec.fmt).qmin if spec.role in ("code", "lut", "zero") and not getattr(qcfg, spec.fmt).symmetric else 0
        out[spec.name] = np.full(shape, 1 if spec.role == "multiplier" else lo, np.int64)
    out["qrange"] = layout.qrange_of(qcfg)
    out["x_dither"] = np.array([int(qcfg.state_rounding == "dither")])
    return out


def test_validate_reruns_the_bound_proof():
    """In-range values whose worst case reaches 2**53 fail the site proof (here: 2048 modes of 16-bit
    C and state codes with the largest multipliers), and so do dithered shifts above 32."""
    from dataclasses import replace

    from intssm.datapath.qspec import QFormat

    cfg = ModelConfig(d_model=1, d_state=4096, n_layers=1)
    q = replace(PRESETS["w8a8"], C=QFormat(16), x_re=QFormat(16), x_im=QFormat(16))
    a = _blank(cfg, q)
    layout.validate(a, cfg, q, 784)  # unit multipliers: 2**41.x, proved
    a["y_M"] = np.full_like(a["y_M"], 2**15 - 1)
    with pytest.raises(IntssmError, match="site l0.y: accumulator may reach 2\\*\\*5"):
        layout.validate(a, cfg, q, 784)
    qd = replace(PRESETS["w8a8"], state_rounding="dither")
    cfg = ModelConfig(d_model=2, d_state=4, n_layers=1)
    a = _blank(cfg, qd)
    layout.validate(a, cfg, qd, 784)
    a["x_im_S"] = np.full_like(a["x_im_S"], 33)
    with pytest.raises(IntssmError, match="site l0.x_im: the dithered state rounding needs shifts <= 32"):
        layout.validate(a, cfg, qd, 784)
    with pytest.raises(IntssmError, match="seq_len must be an integer"):
        layout.validate(a, cfg, qd, "784")
    with pytest.raises(IntssmError, match="seq_len must be an integer"):
        layout.validate(a, cfg, qd, 2**30)


def test_integer_side_imports_no_torch():
    """The simulator, the layout and both exporters run without Torch."""
    code = ("import sys, importlib.abc\n"
            "class B(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, n, p, t=None):\n"
            "        if n == 'torch' or n.startswith('torch.'): raise ImportError('torch blocked')\n"
            "sys.meta_path.insert(0, B())\n"
            "import intssm.integer.sim, intssm.datapath.layout, intssm.integer.export, intssm.integer.cexport, intssm.integer.cost, intssm.datapath.inputq, intssm.integer.sim\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_spec_artifact_table_matches_layout():
    """docs/datapath.md's Artifact table lists every array of intssm.datapath.layout, in order, with its shape and role."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "datapath.md").read_text()
    block = doc.split("<!-- artifact-table")[1].split("<!-- /artifact-table -->")[0]
    rows = [ln for ln in block.splitlines() if ln.startswith("| `")]
    got = [tuple(c.strip().strip("`") for c in ln.strip("|").split("|"))[:3] for ln in rows]
    want = [(r["name"], r["shape"], r["role"]) for r in layout.describe()]
    assert got == want
    assert re.search(r"`qrange` rows are `" + ", ".join(layout.QRANGE_ROWS) + "`", doc)


def test_spec_manifest_fields_match_export():
    """Every manifest field the exporter writes is named in the Artifact section."""
    from pathlib import Path

    from intssm.integer.export import manifest_of

    doc = (Path(__file__).resolve().parents[2] / "docs" / "datapath.md").read_text()
    section = doc.split("The manifest's fields:")[1].split("A reader refuses")[0]
    for k in manifest_of(_qm()):
        assert f"`{k}`" in section, k


def test_intmodel_is_made_only_by_validate():
    """An IntModel cannot be constructed, copied with changes (dataclasses.replace) or mutated
    other than through layout.validate: each raises, so every model that exists was checked."""
    import dataclasses

    qm = _qm()
    m = layout.validate(integer_model(qm), qm.dp.cfg, qm.dp.qcfg, qm.dp.seq_len)
    with pytest.raises(TypeError, match="layout.validate"):
        IntModel(m.arrays, m.cfg, m.qcfg, m.seq_len, m.input, m.site_bounds)
    with pytest.raises(TypeError, match="layout.validate"):
        dataclasses.replace(m, seq_len=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.seq_len = 5


def test_validate_checks_the_input_quantizer():
    """The input quantizer is a required part of the model: validate keeps the one it is given
    (an InputQuant for float data) and refuses one whose channels disagree with d_input."""
    from intssm.datapath.inputq import InputQuant

    qm = _qm()
    iq = InputQuant(np.zeros(1), np.full(1, 0.5), 6)
    m = layout.validate(integer_model(qm), qm.dp.cfg, qm.dp.qcfg, qm.dp.seq_len, iq)
    assert m.input is iq and m.float_input and m.description()["input"] == iq.to_dict()
    with pytest.raises(IntssmError, match="2 channels, the model 1"):
        layout.validate(integer_model(qm), qm.dp.cfg, qm.dp.qcfg, qm.dp.seq_len, InputQuant(np.zeros(2), np.ones(2), 6))


def test_validate_runs_once_per_export_c(tmp_path, monkeypatch):
    """`export-c` of an artifact validates its model once (the load); the C export, its site
    widths and storage figures take that IntModel without validating again."""
    from intssm import deploy
    from intssm.integer import cexport, export

    npz = tmp_path / "m.npz"
    export.save(npz, _qm())
    calls = []
    real = layout.validate
    monkeypatch.setattr(layout, "validate", lambda *a, **k: calls.append(1) or real(*a, **k))
    res, _, _ = deploy.export_c(npz, tmp_path / "host", show=False)
    assert len(calls) == 1 and len(res["files"]) == 4
    m = export.load(npz)
    cexport.write_c(m, tmp_path / "again")
    cexport.c_storage(m)
    assert len(calls) == 2  # the second load only
