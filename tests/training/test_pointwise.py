"""The fused pointwise layer steps (intssm.training.pointwise) against the Torch path of intssm.training.qmodel."""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import models, quant_configs
from qat_helpers import assert_same_codes_close_grads, drawn_case, loss_and_grads

from intssm.training.ptq import ptq


@given(models(max_layers=2), quant_configs(), st.data())
def test_fused_tail_forward_exact_backward_matches_autograd(m, q, data):
    """Fused steps 3-7 give the Torch path's logit codes exactly, and its gradients for every
    parameter (float64, relative 1e-9); with the Torch scan or the fused one, Abar learned or not."""
    qm, P, y = drawn_case(m, q, data)
    qm.fused_scan = data.draw(st.booleans())
    assert_same_codes_close_grads(loss_and_grads(qm, P, y, fused_tail=False), loss_and_grads(qm, P, y, fused_tail=True))


def test_fused_tail_gradients_independent_of_threads():
    """Weight gradients are summed in fixed row blocks: the same bits on 1 and 2 threads."""
    import numba

    from intssm.training.model import ModelConfig, S4DModel
    from intssm.datapath.qspec import PRESETS

    m = S4DModel(ModelConfig(d_model=4, d_state=4), seed=0).double()
    rng = np.random.default_rng(0)
    qm, _ = ptq(m, PRESETS["w8a8"], torch.from_numpy(rng.random((4, 50, 1))))
    P = rng.integers(0, 256, (8, 50, 1)).astype(np.uint8)
    y = rng.integers(0, 10, 8)
    out = []
    for t in (1, numba.config.NUMBA_NUM_THREADS):
        old = numba.get_num_threads()
        numba.set_num_threads(t)
        try:
            out.append(loss_and_grads(qm, P, y, fused_tail=True)[2])
        finally:
            numba.set_num_threads(old)
    for n in out[0]:
        assert out[0][n] is None and out[1][n] is None or torch.equal(out[0][n], out[1][n]), n
