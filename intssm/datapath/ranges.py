"""Calibrated ranges: the range policies (min/max, a percentile,
the clip of least quantization MSE) that turn calibration samples into ranges, and their JSON form
(stored in every quantized checkpoint)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from intssm.datapath.build import make_quantizer
from intssm.datapath.fixedpoint import round_half_up
from intssm.datapath.qspec import QFormat, QuantConfig, parse_range
from intssm.errors import IntssmError


def component_of(key: str) -> str:
    """The QuantConfig component a calibrated-range key belongs to (``l0.x_re`` -> ``x_re``, ``h0`` -> ``h``)."""
    base = key.split(".")[-1]
    return "h" if base == "h0" else base


MSE_GRID = np.linspace(0.05, 1.0, 96)  # clip ratios of the min/max range tried by the "mse" policy


def _qdq_mse(v: np.ndarray, fmt: QFormat, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Mean squared quantize-dequantize error per column of samples ``v`` (n, C) for ranges lo, hi (C,),
    with the scale and zero point :func:`make_quantizer` gives (one per column)."""
    t = make_quantizer(replace(fmt, per_channel=True), lo, hi, 1e-12)
    q = np.clip(round_half_up(v / t.scale) + t.zero, fmt.qmin, fmt.qmax)
    return np.mean((t.scale * (q - t.zero) - v) ** 2, axis=0)


def apply_range_policies(ranges: dict, samples: dict, qcfg: QuantConfig) -> dict:
    """Ranges under each component's policy, from min/max ``ranges`` and calibration ``samples``.

    ``samples[key]`` (n, C): values of that tensor per channel (weights: all of them; activations:
    a time-strided subsample, :func:`intssm.training.calibrate.calibrate`). A per-tensor format pools the
    channels. Policies:
      minmax       the calibrated min and max
      pNN.N        the (100 - NN.N)th and NN.Nth percentiles (values beyond are clipped)
      mse          min/max scaled by the ratio in MSE_GRID with the least quantize-dequantize MSE
    """
    out = dict(ranges)
    for key, (lo, hi) in ranges.items():
        fmt = getattr(qcfg, component_of(key))
        pol = parse_range(fmt.range)
        if pol == ("minmax",):
            continue
        if key not in samples:
            raise IntssmError(f"range policy {fmt.range!r} for {key} needs calibration samples")
        v = np.asarray(samples[key], np.float64)
        if not fmt.per_channel:
            v = v.reshape(-1, 1)
        if pol[0] == "percentile":
            nlo = np.percentile(v, 100 - pol[1], axis=0)
            nhi = np.percentile(v, pol[1], axis=0)
        else:
            mlo, mhi = v.min(0), v.max(0)
            errs = np.stack([_qdq_mse(v, fmt, a * mlo, a * mhi) for a in MSE_GRID])  # (grid, C)
            a = MSE_GRID[np.argmin(errs, axis=0)]
            nlo, nhi = a * mlo, a * mhi
        C = len(np.atleast_1d(lo))
        out[key] = (np.broadcast_to(nlo, (C,)).astype(np.float64).copy(), np.broadcast_to(nhi, (C,)).astype(np.float64).copy())
    return out


def ranges_to_json(ranges: dict) -> dict:
    return {k: [np.asarray(lo, np.float64).tolist(), np.asarray(hi, np.float64).tolist()] for k, (lo, hi) in ranges.items()}


def ranges_from_json(d: dict) -> dict:
    return {k: (np.asarray(v[0], np.float64), np.asarray(v[1], np.float64)) for k, v in d.items()}
