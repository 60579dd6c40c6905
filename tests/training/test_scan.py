"""The fused quantized scan (intssm.training.scan) against the Torch reference scan of intssm.training.qmodel."""

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from qat_helpers import assert_same_codes_close_grads, drawn_case, loss_and_grads
from strategies import models, quant_configs

from intssm.training.ptq import ptq


@given(models(max_layers=2), quant_configs(), st.data())
def test_fused_scan_forward_exact_backward_matches_autograd(m, q, data):
    """Fused forward == reference forward (integer equality of the logit codes); fused backward ==
    autograd through the reference scan (float64, relative 1e-9); Abar learned or not."""
    qm, P, y = drawn_case(m, q, data)
    qm.fused_tail = data.draw(st.booleans())
    assert_same_codes_close_grads(loss_and_grads(qm, P, y, fused_scan=False), loss_and_grads(qm, P, y, fused_scan=True))


def test_fused_scan_counts_clips():
    """The fused scan reports the same clip counts as the reference scan."""
    from intssm.training.model import ModelConfig, S4DModel
    from intssm.datapath.qspec import PRESETS
    from intssm.training.scan import fused_scan

    m = S4DModel(ModelConfig(d_model=3, d_state=4), seed=0).double()
    qm, _ = ptq(m, PRESETS["paper-hetero"], torch.full((2, 12, 1), 0.01, dtype=torch.float64))
    u = torch.full((2, 12, 3), 31.0, dtype=torch.float64)
    c = qm.c
    W = qm.weight_codes()
    args = [W[k][0] - c[z][0][:, None] for k, z in (("A_re", "A_re_z"), ("A_im", "A_im_z"), ("B_re", "B_z"), ("B_im", "B_z"),
                                                    ("C_re", "C_z"), ("C_im", "C_z"))]
    qm.fused_scan = False
    t1, t2, nr, ni = qm._scan(0, u, *args, ste=False)
    Mr, Mi = c["x_re_M"][0], c["x_im_M"][0]
    KR = torch.stack([args[0] * Mr[0][:, None], args[1] * Mr[1][:, None], args[2] * Mr[2][:, None]])
    KI = torch.stack([args[0] * Mi[0][:, None], args[1] * Mi[1][:, None], args[3] * Mi[2][:, None]])
    zr, zi = c["x_re_z"][0].numpy(), c["x_im_z"][0].numpy()
    qr = c["qrange"]
    f1, f2, fr, fi = fused_scan(u, KR, KI, args[4], args[5], c["x_re_S"][0].numpy(), c["x_im_S"][0].numpy(),
                                qr["x_re"][0] - zr, qr["x_re"][1] - zr, qr["x_im"][0] - zi, qr["x_im"][1] - zi)
    assert torch.equal(t1, f1) and torch.equal(t2, f2)
    assert (int(nr), int(ni)) == (fr, fi) and fr + fi > 0


def test_recycled_buffers_do_not_leak_between_calls():
    """Buffers go back to the pool in backward: two models' forwards before either backward, then
    a repeat, give exactly the gradients of each one run alone (the pool never hands out a live buffer)."""
    from intssm.training.model import ModelConfig, S4DModel
    from intssm.datapath.qspec import PRESETS

    rng = np.random.default_rng(5)
    P = rng.integers(0, 256, (3, 9, 1)).astype(np.uint8)
    y = rng.integers(0, 10, 3)
    qms = []
    for seed in (0, 1):
        m = S4DModel(ModelConfig(d_model=3, d_state=4, n_layers=2), seed=seed).double()
        qms.append(ptq(m, PRESETS["paper-hetero"], torch.from_numpy(rng.random((2, 9, 1))))[0])
    alone = [loss_and_grads(qm, P, y, fused_scan=True)[2] for qm in qms]
    losses = []
    for qm in qms:  # both forwards first: four scans hold buffers at once
        qm.model.zero_grad()
        lg, _ = qm(torch.from_numpy(P), ste=True)
        losses.append(F.cross_entropy(qm.real_logits(lg), torch.from_numpy(y)))
    for loss in reversed(losses):
        loss.backward()
    for qm, ref in zip(qms, alone):
        for n, p in qm.named_parameters():
            if ref[n] is not None:
                assert torch.equal(p.grad, ref[n]), n
