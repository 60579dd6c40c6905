"""The cost model (intssm.integer.cost) against an instrumented simulator, and memory against a hand count."""

from dataclasses import replace

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from naive_sim import run as naive_run
from strategies import models, quant_configs

from intssm.integer.cost import final_ops, memory, step_ops
from intssm.errors import IntssmError
from intssm.integer.export import from_quantized
from intssm.training.model import ModelConfig, S4DModel
from intssm.training.ptq import ptq
from intssm.datapath.qspec import PRESETS, QFormat, QuantConfig
from intssm.integer.sim import simulate


@given(models(max_layers=2), quant_configs(), st.integers(1, 4), st.integers(0, 2**16))
def test_op_counts_equal_instrumented_simulator(m, q, L, seed):
    """Every operation the naive simulator performs is predicted exactly by step_ops/final_ops,
    and the naive simulator computes the same logits as the Numba one."""
    rng = np.random.default_rng(seed)
    P = rng.integers(0, 256, (1, L, m.cfg.d_input)).astype(np.uint8)
    try:
        qm, _ = ptq(m, q, torch.from_numpy(rng.random((2, L, m.cfg.d_input))))
    except IntssmError:
        return
    arr = from_quantized(qm)
    logits, ops = naive_run(arr.arrays, m.cfg, q, P[0])
    ls, _, _ = simulate(arr, P)
    assert logits == ls[0].tolist()
    want = step_ops(m.cfg, q, L)
    for k, v in list(want.items()):
        want[k] = v * L
    want.update(final_ops(m.cfg, q, L))
    assert +ops == +want


@settings(max_examples=4, deadline=None)
@given(st.integers(2, 8))
def test_input_operand_width_follows_the_input_quantizer(bits):
    """The encoder's input operand is counted at the width the model's input quantizer gives: an
    unsigned b-bit code is a (b + 1)-bit signed operand (raw uint8 data: 9 bits). A float-data
    model quantized with input_bits b: step_ops(..., m.input.bits) equals the naive simulator's
    count, which derives the width from the largest code, and holds mul (b+1)x(weight) products."""
    from intssm import data
    from intssm.integer.cost import opw
    from intssm.training.ptq import ptq_dataset

    rng = np.random.default_rng(bits)
    model = S4DModel(ModelConfig(d_input=2, d_output=3, d_model=2, d_state=2, n_layers=1), seed=1).double()
    x = rng.normal(size=(4, 3, 2)).astype(np.float32)
    q = replace(PRESETS["w8a8"], input_bits=bits)
    qm, _ = ptq_dataset(model, q, data.SeqData(x, np.zeros(4, np.int64), "h", ""))
    m = from_quantized(qm)
    assert m.input.bits == bits and m.float_input
    P = m.input_codes(x)
    _, ops = naive_run(m.arrays, m.cfg, q, P[0], m.input.bits)
    want = step_ops(m.cfg, q, 3, m.input.bits)
    for k, v in list(want.items()):
        want[k] = v * 3
    want.update(final_ops(m.cfg, q, 3))
    assert +ops == +want
    w = opw(q.enc_w)
    assert want[f"mul {max(w, bits + 1)}x{min(w, bits + 1)}"] >= 3 * 2 * 2  # H x d_in products per step
    raw = step_ops(m.cfg, q, 3)  # the same model counted as if it read raw uint8 inputs
    assert (raw == step_ops(m.cfg, q, 3, m.input.bits)) == (bits == 8)


def test_memory_hand_count():
    """A tiny model counted by hand: d_model 1, d_state 2 (one complex mode), 1 layer, 2 classes."""
    cfg = ModelConfig(d_input=1, d_output=2, d_model=1, d_state=2, n_layers=1)
    q = QuantConfig(A_re=QFormat(6), A_im=QFormat(5), B=QFormat(4), C=QFormat(4), D=QFormat(4),
                    x_re=QFormat(7), x_im=QFormat(3), h=QFormat(6), y=QFormat(6), act=QFormat(6, False),
                    glu=QFormat(5), sig=QFormat(4, False), pool=QFormat(8), logits=QFormat(16))
    m = memory(cfg, q, seq_len=10)
    rows = {r["name"]: r for r in m["rows"]}
    # weights: enc_w 1x8, A_re 6, A_im 5, B 2x4, C 2x4, D 4, mix_w 2x8, dec_w 2x8
    assert sum(r["bits"] for r in m["rows"] if r["kind"] == "weight") == 8 + 6 + 5 + 8 + 8 + 4 + 16 + 16
    # biases: enc 1, mix 2, dec 2, each 32 bits (the default), or bias_bits
    assert sum(r["bits"] for r in m["rows"] if r["kind"] == "bias") == 5 * 32
    m12 = memory(cfg, replace(q, bias_bits=12), seq_len=10)
    assert sum(r["bits"] for r in m12["rows"] if r["kind"] == "bias") == 5 * 12
    assert m12["flash_bytes"] < m["flash_bytes"] and m12["ram_bytes"] == m["ram_bytes"]
    # zero points: act (6 bits, one per layer); sig has none (fixed)
    assert sum(r["bits"] for r in m["rows"] if r["kind"] == "zero point") == 6
    # multipliers: enc 1, x_re 3, x_im 3, y 3, glu 2, h 2, pool 1, logits 2 = 17 x 16 bits
    assert sum(r["bits"] for r in m["rows"] if r["kind"] == "multiplier") == 17 * 16
    # shifts: one per site output: 1 + 1 + 1 + 1 + 2 + 1 + 1 + 2 = 10 x 8 bits
    assert sum(r["bits"] for r in m["rows"] if r["kind"] == "shift") == 10 * 8
    # LUTs: gelu 2**6 entries x 6 bits, sigmoid 2**5 x 4 bits
    assert rows["gelu_lut"]["bits"] == 64 * 6 and rows["sig_lut"]["bits"] == 32 * 4
    # state: 7 + 3 bits
    assert rows["state x_re"]["bits"] + rows["state x_im"]["bits"] == 10
    # float32 twin: 3850-style count for this model: enc 2, layer (2 + 6 + 1 + 2 + 2) - log_dt... via fp32_params
    assert m["fp32_params"] == 2 + (1 + 6 + 1 + 2 + 2) + 2 + 2
    assert m["fp32_flash_bytes"] == 4 * (m["fp32_params"] - 1)


def test_memory_presets_ordered():
    """Fewer bits never cost more memory; the heterogeneous preset is smaller than w8a8."""
    cfg = ModelConfig()
    assert memory(cfg, PRESETS["paper-hetero"])["bytes"] < memory(cfg, PRESETS["w8a8"])["bytes"]
    assert memory(cfg, PRESETS["w8a8"])["bytes"] < memory(cfg, PRESETS["w16a16"])["bytes"]


def test_hetero_x10_6x_is_within_the_papers_memory():
    """The preset meant to beat the paper at its memory stores weights and biases in at most
    float32 / 6.3 (the paper's heterogeneous reduction) for paper-small."""
    m = memory(ModelConfig(), PRESETS["hetero-3b-x10"])
    assert m["weights_bytes"] <= m["fp32_weights_bytes"] / 6.3
    assert m["weights_bytes"] < memory(ModelConfig(), PRESETS["hetero-x10"])["weights_bytes"]
