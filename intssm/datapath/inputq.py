"""The input quantizer: float features -> the unsigned codes the integer datapath takes.

Every model has an input quantizer, a required field of its datapath (:class:`IntModel`'s
``input``, :class:`~intssm.training.qmodel.QuantS4D`'s ``iq``, set when the model is built).
Raw ``uint8`` data (MNIST pixels) enter the datapath as themselves, real value ``p / 255``: the
identity quantizer :data:`RAW_UINT8` (8-bit codes). Float
features (sensor readings, speech coefficients) are quantized per channel j before the first
integer operation, on the host or in the sensor's front end:

    p_j = clamp(round_half_up((u_j - lo_j) / s_j), 0, 2**b - 1),   s_j = (hi_j - lo_j) / (2**b - 1)

with [lo_j, hi_j] calibrated on the training sequences (min/max or a percentile, ``input_range``
in the quant config) and b = ``input_bits`` (2..8). The datapath then sees the codes ``p`` exactly
as it sees pixels; the float model becomes the one that reads codes: its encoder is folded,
``W' = W diag(255 s)`` and ``b' = b + W lo``, so that ``W' (p / 255) + b' = W (lo + s p) + b``, the
original encoder on the dequantized input. Nothing else in the datapath changes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from intssm.errors import IntssmError
from intssm.datapath.fixedpoint import round_half_up
from intssm.datapath.qspec import INPUT_SCALE


def model_input(P: np.ndarray) -> np.ndarray:
    """The float32 values the float model reads for input codes ``P``: ``p / 255``
    (:data:`intssm.datapath.qspec.INPUT_SCALE`, the datapath's one input scale), as a float32
    division rounded to nearest (``np.float32(1 / INPUT_SCALE)`` is exactly 255)."""
    return np.asarray(P).astype(np.float32) / np.float32(1.0 / INPUT_SCALE)


@dataclass(frozen=True)
class RawInput:
    """The identity input quantizer of a model quantized on raw ``uint8`` data: the codes are the
    data, 8 bits unsigned (0..255). Stored as ``null`` (the checkpoint's ``qspec.input``, the
    artifact's ``input``)."""

    bits: int = 8
    float_data = False

    def codes(self, x: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """uint8 sequences as themselves; anything else is refused."""
        if x.dtype != np.uint8:
            raise IntssmError("float data, but this model takes raw uint8 inputs (it was quantized on uint8 data)")
        return x

    def to_dict(self) -> None:
        return None


#: The identity quantizer (raw uint8 inputs).
RAW_UINT8 = RawInput()


@dataclass
class InputQuant:
    """Per-channel affine input quantizer: ``lo`` (d,), ``scale`` (d,) float64, ``bits``."""

    lo: np.ndarray
    scale: np.ndarray
    bits: int
    float_data = True

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def codes(self, x: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Float sequences (n, L, d) -> uint8 codes (n, L, d); padding steps (>= lengths) get code 0."""
        if x.shape[-1] != len(self.lo):
            raise IntssmError(f"input has {x.shape[-1]} features per step, the input quantizer has {len(self.lo)}")
        q = np.clip(round_half_up((np.asarray(x, np.float64) - self.lo) / self.scale), 0, self.qmax).astype(np.uint8)
        if lengths is not None:
            q[np.arange(q.shape[1])[None, :] >= np.asarray(lengths)[:, None]] = 0
        return q

    def dequantize(self, p: np.ndarray) -> np.ndarray:
        return self.lo + self.scale * np.asarray(p, np.float64)

    def to_dict(self) -> dict:
        return {"bits": int(self.bits), "lo": [float(v) for v in self.lo], "scale": [float(v) for v in self.scale]}

    @classmethod
    def from_dict(cls, d) -> "InputQuant":
        """Checked: bits in 2..8, one finite lo and one finite positive scale per channel."""
        try:
            bits, lo, scale = d["bits"], d["lo"], d["scale"]
            if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
                raise ValueError(f"bits must be an integer in 2..8, got {bits!r}")
            lo, scale = np.asarray(lo, np.float64), np.asarray(scale, np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise IntssmError(f"input quantizer entry is malformed ({e})") from None
        if lo.ndim != 1 or lo.shape != scale.shape or not len(lo):
            raise IntssmError("input quantizer entry: lo and scale must be lists of one value per channel")
        if not (np.isfinite(lo).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise IntssmError("input quantizer entry: lo must be finite and scale finite and positive")
        return cls(lo, scale, bits)


def from_entry(d, d_input: int | None = None):
    """The input quantizer stored as ``d``: None is :data:`RAW_UINT8`, an object an
    :class:`InputQuant` (checked, and against ``d_input`` channels when given)."""
    if d is None:
        return RAW_UINT8
    iq = InputQuant.from_dict(d)
    if d_input is not None and len(iq.lo) != d_input:
        raise IntssmError(f"the input quantizer has {len(iq.lo)} channels, the model {d_input} (d_input)")
    return iq


def calibrate_input(x: np.ndarray, lengths: np.ndarray, bits: int, policy: str = "minmax") -> InputQuant:
    """Per-channel range of the valid steps of float sequences ``x`` (n, L, d): their min and max,
    or the (100 - p)th and pth percentiles for ``policy`` = ``pNN.N``. A constant channel gets a
    range of 1 around its value (any scale represents it exactly)."""
    from intssm.datapath.qspec import parse_range

    pol = parse_range(policy)
    if pol is None or pol == ("mse",):
        raise IntssmError(f"input_range must be 'minmax' or a percentile like 'p99.9', got {policy!r}")
    valid = np.arange(x.shape[1])[None, :] < np.asarray(lengths)[:, None]  # (n L)
    v = np.asarray(x, np.float64)[valid]  # (steps, d)
    if not len(v):
        raise IntssmError("no valid steps to calibrate the input quantizer on")
    if pol == ("minmax",):
        lo, hi = v.min(0), v.max(0)
    else:
        lo, hi = np.percentile(v, 100 - pol[1], axis=0), np.percentile(v, pol[1], axis=0)
    flat = hi - lo <= 1e-12 * np.maximum(1.0, np.abs(lo))
    lo, hi = np.where(flat, lo - 0.5, lo), np.where(flat, lo + 0.5, hi)
    return InputQuant(lo, (hi - lo) / (2**bits - 1), bits)


def fold_input(model, iq: InputQuant):
    """A copy of float ``model`` that reads input codes as ``p / 255`` and computes what ``model``
    computes on the dequantized input ``lo + s p``: encoder W' = W diag(255 s), b' = b + W lo."""
    import torch

    out = copy.deepcopy(model)
    enc = out.encoder
    with torch.no_grad():
        W = enc.weight.detach().to(torch.float64)
        lo = torch.as_tensor(iq.lo, dtype=torch.float64)
        s = torch.as_tensor(iq.scale, dtype=torch.float64)
        b = enc.bias.detach().to(torch.float64) + W @ lo
        enc.weight.copy_((W * (255.0 * s)[None, :]).to(enc.weight.dtype))
        enc.bias.copy_(b.to(enc.bias.dtype))
    return out


def input_codes(iq, d_input: int, x: np.ndarray, lengths=None) -> np.ndarray:
    """The datapath's uint8 input codes of sequences ``x`` (n, L, d) for a model with input
    quantizer ``iq`` and ``d_input`` features per step: raw uint8 data as themselves
    (:data:`RAW_UINT8`), float data through an :class:`InputQuant`; a model calibrated on one kind
    refuses the other."""
    if x.ndim != 3 or x.shape[-1] != d_input:
        raise IntssmError(f"data have {x.shape[-1] if x.ndim == 3 else x.shape} features per step, "
                          f"the model expects {d_input}")
    if not iq.float_data:
        return iq.codes(x, lengths)
    if x.dtype == np.uint8:
        raise IntssmError("uint8 data, but this model quantizes float inputs (it was calibrated on float data)")
    return iq.codes(x, lengths)
