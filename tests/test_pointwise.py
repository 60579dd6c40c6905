"""The fused pointwise layer steps (intssm.pointwise) against the Torch path of intssm.qmodel."""

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from test_datapath import inputs, models, quant_configs

from intssm.errors import IntssmError
from intssm.qmodel import ptq


def _loss_and_grads(qm, P, y, fused_tail):
    qm.fused_tail = fused_tail
    qm.model.zero_grad()
    if qm.discrete is not None:
        qm.discrete.zero_grad()
    lg, _ = qm(torch.from_numpy(P), ste=True)
    loss = F.cross_entropy(qm.real_logits(lg), torch.from_numpy(y))
    loss.backward()
    params = list(qm.model.named_parameters()) + (list(qm.discrete.named_parameters()) if qm.discrete is not None else [])
    return lg.detach(), loss.item(), {n: p.grad.clone() if p.grad is not None else None for n, p in params}


@given(models(max_layers=2), quant_configs(), st.data())
def test_fused_tail_forward_exact_backward_matches_autograd(m, q, data):
    """Fused steps 3-7 give the Torch path's logit codes exactly, and its gradients for every
    parameter (float64, relative 1e-9); with the Torch scan or the fused one, Abar learned or not."""
    L = data.draw(st.integers(1, 10))
    P = data.draw(inputs(m.cfg.d_input, L))
    y = np.random.default_rng(0).integers(0, m.cfg.d_output, len(P))
    try:
        qm, _ = ptq(m, q, torch.from_numpy(np.random.default_rng(1).random((3, L, m.cfg.d_input))))
    except IntssmError:
        assume(False)
    qm.fused_scan = data.draw(st.booleans())
    if data.draw(st.booleans()):
        qm.make_discrete()
    lr, loss_r, gr = _loss_and_grads(qm, P, y, False)
    lf, loss_f, gf = _loss_and_grads(qm, P, y, True)
    assert torch.equal(lr, lf)
    assert loss_r == loss_f
    for n in gr:
        if gr[n] is None:
            assert gf[n] is None or not gf[n].any()
            continue
        scale = max(1e-12, gr[n].abs().max().item())
        assert (gf[n] - gr[n]).abs().max().item() <= 1e-9 * scale + 1e-12, n


def test_fused_tail_gradients_independent_of_threads():
    """Weight gradients are summed in fixed row blocks: the same bits on 1 and 2 threads."""
    import numba

    from intssm.model import ModelConfig, S4DModel
    from intssm.qspec import PRESETS

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
            out.append(_loss_and_grads(qm, P, y, True)[2])
        finally:
            numba.set_num_threads(old)
    for n in out[0]:
        assert out[0][n] is None and out[1][n] is None or torch.equal(out[0][n], out[1][n]), n
