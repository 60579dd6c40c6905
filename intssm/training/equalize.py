"""State equalization: a diagonal change of state basis that gives every mode the same range.

A per-head state quantizer has one scale for all N/2 modes of a head, set by the mode with the
largest state. The others use a few of its codes: in the seed-7 ``paper-small`` float model the
median mode spans 1/2.5 to 1/15.5 of its head's range, so at 6 bits (31 codes a side) it gets 2 to 12.

For real d_n > 0 the substitution x_n = d_n x'_n leaves the model's function unchanged:

    x'_k = Abar x'_{k-1} + (Bbar / d) u_k,      y_k = 2 Re(sum_n (C d)_n x'_{k,n}) + D u_k

(Abar is diagonal, so it commutes with d). With r_n the largest |Re x_n|, |Im x_n| of mode n on
calibration data and r_max its head's largest,

    d_n = (r_n / r_max) ** alpha,   alpha in [0, 1],

every mode's range becomes r_n ** (1 - alpha) r_max ** alpha: alpha = 1 gives all modes the head's
range. The range moves into B and C (B / d grows for small modes, C d shrinks), so alpha trades
state resolution against B and C resolution, as SmoothQuant trades activations against weights.
It is applied to the float model before calibration; the datapath itself is unchanged.
"""

from __future__ import annotations

import copy

import torch

from intssm.errors import IntssmError
from intssm.training.model import S4DModel
from intssm.training.calibrate import calibrate


def mode_ranges(model: S4DModel, u: torch.Tensor, lengths=None) -> list[torch.Tensor]:
    """Per layer, r (H, N/2): the largest |Re x_n| or |Im x_n| of each mode over ``u`` (B, L, d)
    float inputs (valid steps only, ``lengths`` (B,)), from the float model run recurrently in
    float64 (:func:`intssm.training.calibrate.calibrate`)."""
    return calibrate(model, u, want_modes=True, lengths=lengths).modes


def check_strength(alpha: float, what: str = "state equalization strength") -> None:
    """Refuse an equalization strength outside [0, 1] (NaN included), naming it as ``what``."""
    if not 0 <= alpha <= 1:
        raise IntssmError(f"{what} must be in [0, 1] (0 = off), got {alpha}")


@torch.no_grad()
def equalize_states(model: S4DModel, u: torch.Tensor, alpha: float, lengths=None) -> tuple[S4DModel, list[torch.Tensor]]:
    """A copy of ``model`` with B / d and C d per mode, d = (r / r_max) ** alpha (module docstring);
    returns it and d per layer (H, N/2). Modes that never move (r = 0) keep d = 1."""
    check_strength(alpha)
    out = copy.deepcopy(model)
    ds = []
    for layer, r in zip(out.layers, mode_ranges(model, u, lengths)):
        rmax = r.amax(1, keepdim=True)
        d = torch.where((r > 0) & (rmax > 0), r / rmax.clamp_min(1e-300), torch.ones_like(r)) ** alpha
        ssm = layer.ssm
        ssm.B.copy_((ssm.B.to(torch.float64) / d[..., None]).to(ssm.B.dtype))
        ssm.C.copy_((ssm.C.to(torch.float64) * d[..., None]).to(ssm.C.dtype))
        ds.append(d)
    return out, ds
