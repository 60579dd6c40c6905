"""The textbook fake-quant loop that tools/bench_qat.py times as a naive baseline computes the model."""

from __future__ import annotations

import copy

import numpy as np
import torch

from conftest import load_tool
from intssm.training.model import ModelConfig, S4DModel
from intssm.training.ptq import ptq
from intssm.datapath.qspec import PRESETS


def _bench():
    return load_tool("bench_qat")


def test_textbook_loop_is_the_model_stepped_with_fake_quantization():
    """At 16 bits the textbook loop's logits are the float model's to within the quantization
    noise; at 8 bits they move away from them (its fake quantizers act), and gradients reach the
    weights through the straight-through estimators."""
    m = S4DModel(ModelConfig(d_model=4, d_state=8, n_layers=2), seed=1)
    rng = np.random.default_rng(0)
    P = torch.from_numpy(rng.integers(0, 256, (6, 40, 1)).astype(np.uint8))
    u = P.double() / 255.0
    fwd = _bench().textbook_forward
    with torch.no_grad():
        ref = m.double()(u).float()
    err = {}
    for cfg in ("w16a16", "w8a8"):
        qm, _ = ptq(copy.deepcopy(m), PRESETS[cfg], u)
        tm = copy.deepcopy(qm.model).float()
        out = fwd(tm, qm.dp.tq, P)
        err[cfg] = float((out.detach() - ref).abs().max() / ref.abs().max())
        out.sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tm.parameters())
    assert err["w16a16"] < 5e-4, err
    assert err["w8a8"] > 5 * err["w16a16"], err
