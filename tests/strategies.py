"""Hypothesis strategies shared by the property tests: random quantization configurations, small
random float models (some with slow modes), and uint8 input sequences with edge patterns."""

import numpy as np
import torch
from hypothesis import strategies as st

from intssm.datapath.qspec import ACTIVATIONS, PER_CHANNEL_OK, WEIGHTS, QFormat, QuantConfig
from intssm.training.model import ModelConfig, S4DModel


@st.composite
def quant_configs(draw):
    kw = {}
    for name in WEIGHTS + ACTIVATIONS:
        bits = draw(st.integers(2, 16))
        sym = draw(st.booleans()) if name != "sig" else False
        pc = draw(st.booleans()) if name in PER_CHANNEL_OK else False
        rng = draw(st.sampled_from(["minmax", "minmax", "p99.5", "mse"])) if name != "sig" else "minmax"
        kw[name] = QFormat(bits, sym, pc, rng)
    kw["state_clip"] = draw(st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0]))
    kw["stable_abar"] = draw(st.booleans())
    kw["bias_bits"] = draw(st.sampled_from([32, 32, 16, 8, 4]))  # narrow ones saturate some biases
    kw["state_rounding"] = draw(st.sampled_from(["nearest", "dither"]))
    if draw(st.booleans()):  # one scale for Re and Im of Abar and of the state: their formats equal
        kw |= {"A_im": kw["A_re"], "x_im": kw["x_re"], "complex_scale": "shared"}
    return QuantConfig(**kw)


@st.composite
def models(draw, max_layers=3):
    cfg = ModelConfig(
        d_model=draw(st.integers(1, 4)), d_state=2 * draw(st.integers(1, 4)), n_layers=draw(st.integers(1, max_layers)),
        d_input=draw(st.integers(1, 2)), d_output=draw(st.integers(2, 5)), pool=draw(st.sampled_from(["mean", "last"])),
    )
    m = S4DModel(cfg, seed=draw(st.integers(0, 2**16)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(draw(st.sampled_from([0.1, 1.0, 3.0])))
        if draw(st.booleans()):  # |Abar| close to 1: slow decay, tiny dt
            for layer in m.layers:
                layer.ssm.log_A_re.fill_(-8.0)
                layer.ssm.log_dt.copy_(torch.full_like(layer.ssm.log_dt, -7.0) + torch.rand(layer.ssm.log_dt.shape, generator=g))
    return m.double()


@st.composite
def inputs(draw, d_input, L):
    kind = draw(st.sampled_from(["random", "zeros", "max", "mixed"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    B = draw(st.integers(1, 4))
    if kind == "zeros":
        return np.zeros((B, L, d_input), np.uint8)
    if kind == "max":
        return np.full((B, L, d_input), 255, np.uint8)
    P = rng.integers(0, 256, (B, L, d_input)).astype(np.uint8)
    if kind == "mixed":
        P[:, ::2] = 255
        P[:, 1::3] = 0
    return P
