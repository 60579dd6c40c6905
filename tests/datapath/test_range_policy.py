"""Range policies (min/max, percentile, MSE): validation, their defining properties, and exact PTQ."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from intssm import data
from intssm.training import checkpoint
from intssm.errors import IntssmError
from intssm.integer.export import from_quantized
from intssm.training.model import PRESETS, S4DModel
from intssm.training.ptq import from_checkpoint, ptq, qspec_entry
from intssm.datapath.qspec import QFormat, QuantConfig, parse_range
from intssm.datapath.ranges import MSE_GRID, _qdq_mse, apply_range_policies
from intssm.integer.sim import simulate


@pytest.mark.parametrize("bad", ["p100", "p50", "p", "pxx", "max", "", "MSE"])
def test_bad_range_policies_are_refused(bad):
    """Range strings other than minmax, mse and p<q> with 50 < q < 100 (p100, p50, p, pxx, max, empty, MSE) are
    refused with "range must be"."""
    with pytest.raises(IntssmError, match="range must be"):
        QuantConfig.from_dict({"y": {"bits": 8, "range": bad}})


def test_sig_range_is_fixed_and_policies_round_trip():
    """A range policy on sig is refused; per-component policies parse (others default to minmax), the config
    equals itself after to_dict/from_dict, and parse_range reads p99.99 as the 99.99th percentile."""
    with pytest.raises(IntssmError, match="sig has a fixed range"):
        QuantConfig.from_dict({"sig": {"bits": 8, "symmetric": False, "range": "p99"}})
    q = QuantConfig.from_dict({"x_re": {"bits": 6, "range": "p99.9"}, "B": {"bits": 4, "range": "mse"}})
    assert q.x_re.range == "p99.9" and q.B.range == "mse" and q.C.range == "minmax"
    assert QuantConfig.from_dict(q.to_dict()) == q
    assert parse_range("p99.99") == ("percentile", 99.99)


samples = arrays(np.float64, st.tuples(st.integers(2, 200), st.integers(1, 4)),
                 elements=st.floats(-50, 50, allow_nan=False, width=32))


@given(samples, st.integers(2, 8), st.booleans(), st.booleans())
def test_policies_shrink_ranges_and_mse_never_loses_to_minmax(v, bits, sym, pc):
    """On drawn samples, bits, symmetry and per-channel: p99 and mse ranges (with 0 added) never exceed min/max,
    the mse range's quantization MSE is <= the min/max range's, and minmax returns the calibrated ranges
    as they are."""
    C = v.shape[1]
    R = {"l0.y": (v.min(0), v.max(0))}
    for pol in ("p99", "mse"):
        fmt = QFormat(bits, sym, pc, pol)
        q = QuantConfig(y=fmt)
        lo, hi = apply_range_policies(R, {"l0.y": v}, q)["l0.y"]
        assert lo.shape == hi.shape == (C,)
        # never wider than min/max (both quantizers always include 0, so compare the ranges with 0 added)
        assert np.all(np.minimum(lo, 0) >= min(v.min(), 0) - 1e-9) and np.all(np.maximum(hi, 0) <= max(v.max(), 0) + 1e-9)
        if pol == "mse":
            pooled = v if pc else v.reshape(-1, 1)
            mlo, mhi = (v.min(0), v.max(0)) if pc else (np.array([v.min()]), np.array([v.max()]))
            got = _qdq_mse(pooled, fmt, lo if pc else lo[:1], hi if pc else hi[:1])
            full = _qdq_mse(pooled, fmt, mlo, mhi)  # the ratio 1.0 is on the grid
            assert MSE_GRID[-1] == 1.0 and np.all(got <= full + 1e-12)
    assert apply_range_policies(R, {}, QuantConfig())["l0.y"] is R["l0.y"]  # minmax needs no samples


def test_ptq_with_policies_is_bit_exact_and_reloads_exactly(tmp_path):
    """PTQ with percentile and mse policies: Torch logits == simulator logits (integers, ==) and counters agree;
    the saved and reloaded checkpoint simulates to identical logits."""
    m = S4DModel(PRESETS["tiny"], seed=5).double()
    q = QuantConfig.from_dict({n: {"bits": 6, "range": r} for n, r in
                               (("h", "p99.9"), ("x_re", "mse"), ("x_im", "p99"), ("B", "mse"), ("y", "p99.5"))})
    cal = data.load("smnist", "train", 16)
    qm, ranges = ptq(m, q, torch.from_numpy(cal.as_float()))
    te = data.load("smnist", "test", 20)
    lg, cnt, _ = simulate(from_quantized(qm), te.x)
    lt, ct = qm(torch.from_numpy(te.x), counts=True)
    assert np.array_equal(lg, lt.detach().numpy().astype(np.int64))
    assert [int(c) for c in cnt.sum(0)] == [ct[n] for n in qm.counters]
    path = tmp_path / "q.pt"
    checkpoint.save(path, m, qspec=qspec_entry(qm, ranges))
    m2, ck = checkpoint.load(path)
    qm2 = from_checkpoint(m2.double(), ck)
    lg2, _, _ = simulate(from_quantized(qm2), te.x)
    assert np.array_equal(lg, lg2)
