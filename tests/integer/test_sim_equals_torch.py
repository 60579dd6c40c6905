"""The two executions of the datapath agree: Torch quantized model == Numba simulator, as integers."""

import numba
import pytest
import numpy as np
import torch
from hypothesis import assume, event, given
from hypothesis import strategies as st

from intssm.errors import IntssmError
from intssm.integer.export import from_quantized
from intssm.training.model import ModelConfig, S4DModel
from intssm.training.ptq import ptq
from intssm.datapath.qspec import PRESETS, QuantConfig
from intssm.datapath import layout
from intssm.integer import sim
from intssm.integer.sim import simulate
from strategies import inputs, models, quant_configs


def _both(m, qcfg, P, calib):
    try:
        qm, _ = ptq(m, qcfg, torch.from_numpy(calib))
    except IntssmError as e:  # configurations beyond the exact range are refused, never run
        assert "2**53" in str(e) or "too large" in str(e) or "shifts <= 32" in str(e)
        assume(False)
    lt, ct = qm(torch.from_numpy(P), counts=True)
    arr = from_quantized(qm)
    ls, cs, _ = simulate(arr, P)
    lr, cr, _ = simulate(arr, P, reference=True)
    assert (ls == lr).all() and (cs == cr).all(), "fast kernel differs from the reference kernel"
    l64, c64, _ = simulate(arr, P, width=64)
    assert (l64 == lr).all() and (c64 == cr).all(), "64-bit fast kernel differs from the reference kernel"
    return lt.detach().numpy(), ct, ls, cs, qm


def _fits32(arr):
    return sim.state_width(arr) == 32


@given(models(), quant_configs(), st.data())
def test_torch_equals_simulator_whole_model(m, qcfg, data):
    """Random model, random per-component formats: identical integer logits and saturation counts."""
    L = data.draw(st.integers(1, 12))
    P = data.draw(inputs(m.cfg.d_input, L))
    calib = data.draw(st.sampled_from([0.3, 1.0])) * np.random.default_rng(0).random((3, L, m.cfg.d_input))
    lt, ct, ls, cs, qm = _both(m, qcfg, P, calib)
    event(f"mode loop fits int32: {_fits32(from_quantized(qm))}")
    event(f"state rounding: {qcfg.state_rounding}")
    assert np.array_equal(lt, lt.round()), "Torch path left the integer grid"
    assert (lt.astype(np.int64) == ls).all()
    assert [ct[k] for k in qm.counters] == cs.sum(0).tolist()


@given(models(max_layers=1), quant_configs(), st.data())
def test_torch_equals_simulator_one_step(m, qcfg, data):
    """A single S4D step (L = 1) from the zero state: identical integers."""
    P = data.draw(inputs(m.cfg.d_input, 1))
    calib = np.random.default_rng(1).random((2, 1, m.cfg.d_input))
    lt, ct, ls, cs, qm = _both(m, qcfg, P, calib)
    assert (lt.astype(np.int64) == ls).all()
    assert [ct[k] for k in qm.counters] == cs.sum(0).tolist()


def test_saturation_is_counted_not_wrapped():
    """Calibrating on tiny inputs then feeding 255s saturates: both paths clamp and count the same events."""
    m = S4DModel(ModelConfig(d_model=3, d_state=4, n_layers=2), seed=3).double()
    calib = np.full((2, 16, 1), 0.01)
    P = np.full((2, 16, 1), 255, np.uint8)
    lt, ct, ls, cs, qm = _both(m, PRESETS["paper-hetero"], P, calib)
    assert (lt.astype(np.int64) == ls).all()
    assert sum(ct.values()) > 0 and [ct[k] for k in qm.counters] == cs.sum(0).tolist()
    lo, hi = qm.dp.qcfg.logits.qmin, qm.dp.qcfg.logits.qmax
    assert ls.min() >= lo and ls.max() <= hi


def test_state_trace_matches_final_state_bounds():
    """The traced state codes stay inside their clip range and the traced run gives the same logits."""
    m = S4DModel(ModelConfig(d_model=2, d_state=4, n_layers=1), seed=0).double()
    P = np.random.default_rng(0).integers(0, 256, (3, 20, 1)).astype(np.uint8)
    qm, _ = ptq(m, PRESETS["w8a8"], torch.from_numpy(P / 255.0))
    arr = from_quantized(qm)
    l_all, _, _ = simulate(arr, P)
    l_one, _, (tr, ti) = simulate(arr, P, trace=True)
    assert (l_one[0] == l_all[0]).all()
    assert tr.shape == (20, 1, 2, 2) and tr.min() >= -128 and tr.max() <= 127 and ti.min() >= -128
    assert np.abs(tr).sum() > 0


def test_deterministic_across_threads_and_runs():
    """Same logits and counts with 1 and 2 Numba threads, and across repeated runs."""
    m = S4DModel(ModelConfig(d_model=4, d_state=8, n_layers=2), seed=5).double()
    P = np.random.default_rng(2).integers(0, 256, (16, 40, 1)).astype(np.uint8)
    qm, _ = ptq(m, PRESETS["paper-hetero"], torch.from_numpy(P[:4] / 255.0))
    arr = from_quantized(qm)
    n0 = numba.get_num_threads()
    try:
        outs = []
        for t in (1, min(2, numba.config.NUMBA_NUM_THREADS), 1):
            numba.set_num_threads(t)
            outs.append(simulate(arr, P)[:2])
    finally:
        numba.set_num_threads(n0)
    for lg, c in outs[1:]:
        assert (lg == outs[0][0]).all() and (c == outs[0][1]).all()


@pytest.mark.parametrize("dither", [False, True])
def test_fast_kernel_blocks_equal_reference_many_sequences(dither):
    """The fast kernel's lane blocks (sim.blocks: equal lengths, at most LANES lanes) against the
    reference kernel on more sequences than one block holds, in shuffled mixed lengths: full and
    partial blocks, one-lane blocks, every sequence's logits and counters in its own row."""
    m = S4DModel(ModelConfig(d_model=3, d_state=6, n_layers=2, d_input=2, pool="last"), seed=3).double()
    rng = np.random.default_rng(7)
    B = sim.LANES * 2 + 11  # at least 2 threads: full blocks of LANES lanes
    P = rng.integers(0, 256, (B, 23, 2)).astype(np.uint8)
    lens = rng.choice([23, 23, 23, 17, 5, 1], B)
    q = PRESETS["hetero-3b-x8-dither"] if dither else PRESETS["paper-hetero"]
    qm, _ = ptq(m, q, torch.from_numpy(P[:8] / 255.0))
    arr = from_quantized(qm)
    order, start, count = sim.blocks(lens)
    assert sorted(order.tolist()) == list(range(B)) and count.sum() == B and count.max() <= sim.LANES
    assert all(len(set(lens[order[s:s + c]])) == 1 for s, c in zip(start, count))
    lf, cf, _ = simulate(arr, P, lengths=lens)
    lr, cr, _ = simulate(arr, P, lengths=lens, reference=True)
    assert np.array_equal(lf, lr) and np.array_equal(cf, cr)
    assert cf.sum() > 0


def test_float_input_rejected():
    """The integer datapath takes raw uint8 pixels only."""
    m = S4DModel(ModelConfig(d_model=2, d_state=2), seed=0).double()
    qm, _ = ptq(m, PRESETS["w8a8"], torch.rand(1, 5, 1, dtype=torch.float64))
    import pytest

    with pytest.raises(TypeError):
        simulate(from_quantized(qm), np.zeros((1, 5, 1), np.float32))


def test_int32_width_is_proved_or_refused():
    """A 12-bit state does not fit the 32-bit mode loop: forcing it is an error, auto runs 64-bit;
    an 8-bit one fits, and every width gives the reference integers."""
    rng = np.random.default_rng(3)
    m = S4DModel(ModelConfig(d_model=4, d_state=8, n_layers=1), seed=2).double()
    calib = torch.from_numpy(rng.random((2, 20, 1)))
    P = rng.integers(0, 256, (3, 20, 1)).astype(np.uint8)
    for preset, fits in (("w8a8-state12", False), ("w8a8", True)):
        qm, _ = ptq(m, PRESETS[preset], calib)
        arr = from_quantized(qm)
        assert _fits32(arr) is fits
        ref = simulate(arr, P, reference=True)
        widths = (None, 64, 32) if fits else (None, 64)
        for w in widths:
            out = simulate(arr, P, width=w)
            assert (out[0] == ref[0]).all() and (out[1] == ref[1]).all()
        if not fits:
            with pytest.raises(IntssmError, match="int32"):
                simulate(arr, P, width=32)
    with pytest.raises(IntssmError, match="32 or 64"):
        simulate(arr, P, width=16)


def test_bias_codes_saturate_to_bias_bits():
    """bias_bits b stores every bias as a signed b-bit code: the 32-bit codes saturated to
    [-2**(b-1), 2**(b-1) - 1], and the narrow model still simulates as the Torch model does."""
    from dataclasses import replace

    m = S4DModel(ModelConfig(d_model=4, d_state=4, n_layers=1, d_output=3), seed=3)
    with torch.no_grad():
        for b in (m.encoder.bias, m.layers[0].mix.bias, m.decoder.bias):
            b.copy_(torch.linspace(-2.0, 2.0, b.numel()))
    cal = torch.rand(4, 12, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    wide = from_quantized(ptq(m, PRESETS["w8a8"], cal)[0])
    qm, _ = ptq(m, replace(PRESETS["w8a8"], bias_bits=6), cal)
    narrow = from_quantized(qm)
    for k in ("enc_b", "mix_b", "dec_b"):
        assert narrow.arrays[k].min() >= -32 and narrow.arrays[k].max() <= 31
        assert np.array_equal(narrow.arrays[k], np.clip(wide.arrays[k], -32, 31))
    assert not all(np.array_equal(narrow.arrays[k], wide.arrays[k]) for k in ("enc_b", "mix_b", "dec_b"))  # some saturated
    P = np.random.default_rng(0).integers(0, 256, (3, 12, 1)).astype(np.uint8)
    with torch.no_grad():
        want, _ = qm(torch.from_numpy(P))
    got, _, _ = simulate(narrow, P)
    assert np.array_equal(got, want.numpy().astype(np.int64))


def test_dither_refused_beyond_32_bit_shifts():
    """The dither offset is the top S bits of a 32-bit phase: validation refuses arrays with a
    state shift above 32, so the simulator never sees one (build_datapath refuses such a datapath
    too; the state site's shift is set by its largest term ratio, in practice 14-25)."""
    m = S4DModel(ModelConfig(d_model=2, d_state=2), seed=0).double()
    calib = torch.from_numpy(np.random.default_rng(0).random((2, 5, 1)))
    qm, _ = ptq(m, QuantConfig(state_rounding="dither"), calib)
    arr = from_quantized(qm)
    P = np.zeros((1, 5, 1), np.uint8)
    simulate(arr, P)  # its own shifts are fine
    bad = dict(arr.arrays, x_re_S=np.full_like(arr.arrays["x_re_S"], 33))
    with pytest.raises(IntssmError, match="shifts <= 32"):
        layout.validate(bad, arr.cfg, arr.qcfg, arr.seq_len)
    with pytest.raises(TypeError, match="IntModel"):
        simulate(bad, P)  # loose arrays never reach the kernels
    assert max(arr.arrays["x_re_S"].max(), arr.arrays["x_im_S"].max()) <= 32
