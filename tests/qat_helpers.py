"""Helpers of the QAT kernel properties (tests/training/test_scan.py, tests/training/test_pointwise.py): a drawn PTQ
case, one straight-through step's codes, loss and gradients, and their comparison."""

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import assume
from hypothesis import strategies as st
from strategies import inputs

from intssm.errors import IntssmError
from intssm.training.ptq import ptq


def loss_and_grads(qm, P, y, **flags):
    """Logit codes, loss and every parameter's gradient of one straight-through step, with the
    given QuantS4D switches (``fused_scan``, ``fused_tail``) set."""
    for k, v in flags.items():
        setattr(qm, k, v)
    qm.zero_grad()
    lg, _ = qm(torch.from_numpy(P), ste=True)
    loss = F.cross_entropy(qm.real_logits(lg), torch.from_numpy(y))
    loss.backward()
    grads = {n: p.grad.clone() if p.grad is not None else None for n, p in qm.named_parameters()}
    return lg.detach(), loss.item(), grads


def assert_same_codes_close_grads(ref, new, rel=1e-9):
    """The same logit codes and loss exactly; every gradient within ``rel`` of its largest entry."""
    (lr, loss_r, gr), (lf, loss_f, gf) = ref, new
    assert torch.equal(lr, lf)
    assert loss_r == loss_f
    for n in gr:
        if gr[n] is None:
            assert gf[n] is None or not gf[n].any()
            continue
        scale = max(1e-12, gr[n].abs().max().item())
        assert (gf[n] - gr[n]).abs().max().item() <= rel * scale + 1e-12, n


def drawn_case(m, q, data):
    """A PTQ'd model of the drawn float model and config (cases the datapath refuses are
    skipped), drawn inputs and labels, with Abar learned directly (discrete QAT) or not."""
    L = data.draw(st.integers(1, 10))
    P = data.draw(inputs(m.cfg.d_input, L))
    y = np.random.default_rng(0).integers(0, m.cfg.d_output, len(P))
    try:
        qm, _ = ptq(m, q, torch.from_numpy(np.random.default_rng(1).random((3, L, m.cfg.d_input))))
    except IntssmError:
        assume(False)
    if data.draw(st.booleans()):
        qm.make_discrete()
    return qm, P, y
