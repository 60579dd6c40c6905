"""The proof that no accumulator overflows: the worst-case |integer| of every term a
requantization site sums (:func:`site_term_bounds`), and the largest accumulator of a site with its
multipliers, shift and rounding offset (:func:`site_bound`), proved below 2**53. The one owner of
these sums: the datapath builder, :func:`intssm.datapath.layout.validate`, the cost model and the C
export's widths all read them."""

from __future__ import annotations

import math

import numpy as np

from intssm.datapath.fixedpoint import EXACT_LIMIT
from intssm.datapath.modelconfig import ModelConfig
from intssm.datapath.qspec import QuantConfig
from intssm.errors import IntssmError


def site_term_bounds(cfg: ModelConfig, qcfg: QuantConfig, seq_len: int) -> dict:
    """Worst-case |integer| of each term a requantization site sums, and of the bias it adds,
    keyed by site kind: ``{kind: ([bound_t, ...], bias_bound)}``. A term is one product of centred
    codes (q - z), or a dot product of them; |q - z| <= ``centered_bound`` of its format. Both
    :func:`build_datapath` (which proves the accumulators exact) and the cost model read this."""
    cb = lambda comp: getattr(qcfg, comp).centered_bound  # noqa: E731
    H, N2, bias = cfg.d_model, cfg.d_state // 2, qcfg.bias_bound
    L = seq_len if cfg.pool == "mean" else 1
    return {
        "enc": ([cfg.d_input * cb("enc_w") * 255], bias),
        **{k: (t, 0) for k, t in state_term_bounds(qcfg).items()},
        # y = 2 (sum Cre x_re - sum Cim x_im) + D u
        "y": ([N2 * cb("C") * cb("x_re"), N2 * cb("C") * cb("x_im"), cb("D") * cb("h")], 0),
        "glu": ([H * cb("mix_w") * cb("act")], bias),
        # h_out = h_in + glu_a * sigmoid(glu_b)
        "h": ([cb("h"), cb("glu") * cb("sig")], 0),
        "pool": ([L * cb("h")], 0),
        "logits": ([H * cb("dec_w") * cb("pool")], bias),
    }


def state_term_bounds(qcfg: QuantConfig) -> dict:
    """The state update's terms (no bias): ``{"x_re": [bound_t, ...], "x_im": [...]}``, in the
    order of the datapath's sums (docs/datapath.md, step 2)."""
    cb = lambda comp: getattr(qcfg, comp).centered_bound  # noqa: E731
    # x_re' = Are x_re - Aim x_im + Bre u ;  x_im' = Are x_im + Aim x_re + Bim u
    return {"x_re": [cb("A_re") * cb("x_re"), cb("A_im") * cb("x_im"), cb("B") * cb("h")],
            "x_im": [cb("A_re") * cb("x_im"), cb("A_im") * cb("x_re"), cb("B") * cb("h")]}


def channel_sums(terms_bound, bias_bound: int, M: np.ndarray) -> list:
    """Per channel c of a site, the largest |sum_t term_t M_t + bias M_0| before rounding:
    sum_t bound_t M[t, c] + bias M[0, c] (exact Python integers; :func:`site_bound` adds the
    rounding offset)."""
    return [sum(int(b) * int(M[t, c]) for t, b in enumerate(terms_bound)) + bias_bound * int(M[0, c])
            for c in range(M.shape[1])]


def site_bound(name: str, terms_bound, bias_bound: int, M: np.ndarray, S: np.ndarray, dither: bool) -> int:
    """The largest |accumulator| of one requantization site, proved below 2**53 (else IntssmError).

    ``terms_bound``, ``bias_bound`` from :func:`site_term_bounds`; ``M`` (terms, channels) the
    multipliers, ``S`` (channels,) the shifts. Per channel: sum_t bound_t M_t + bias M_0 plus the
    largest rounding offset, 2**(S-1) (0 for S = 0), or 2**S - 1 for the dithered state rounding
    (which also needs S <= 32). Exact Python integers. :func:`build_datapath` proves every site it
    builds with this, and :func:`intssm.datapath.layout.validate` every site of a loaded model."""
    if dither and S.size and int(S.max()) > 32:
        raise IntssmError(f"datapath site {name}: the dithered state rounding needs shifts <= 32, got {int(S.max())}")
    bound = 0
    for c, acc in enumerate(channel_sums(terms_bound, bias_bound, M)):
        acc += ((1 << int(S[c])) - 1) if dither else (1 << int(S[c] - 1)) if S[c] > 0 else 0
        bound = max(bound, acc)
    if bound >= EXACT_LIMIT:
        raise IntssmError(f"datapath site {name}: accumulator may reach 2**{math.log2(bound):.1f} >= 2**53; "
                          "use fewer bits or a smaller model")
    return bound
