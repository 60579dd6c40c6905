"""From a quant config and calibrated ranges to the datapath's integer constants: each tensor's
quantizer (scale, zero point, code range), each site's multipliers and shift (proved by
:mod:`intssm.datapath.bounds`), and the lookup tables of the nonlinearities. docs/datapath.md gives
the arithmetic of every site.

Quantizer of a tensor T:  real ~= s_T * (q - z_T),  q in [qmin, qmax]
  symmetric:  z = 0,  q in [-2**(b-1), 2**(b-1) - 1],  s = max|T| / (2**(b-1) - 1)
  asymmetric: q in [0, 2**b - 1],  s = (max(T,0) - min(T,0)) / (2**b - 1),  z = round(-min/s)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from intssm.datapath.bounds import site_bound, site_term_bounds
from intssm.datapath.fixedpoint import quantize_multiplier, round_half_up
from intssm.datapath.modelconfig import ModelConfig
from intssm.datapath.qspec import INPUT_SCALE, QFormat, QuantConfig
from intssm.errors import IntssmError


@dataclass
class TensorQ:
    """Quantizer of one tensor: per-channel scale and zero point (C,), code range [qmin, qmax]."""

    fmt: QFormat
    scale: np.ndarray  # float64 (C,)
    zero: np.ndarray  # int64 (C,)

    @property
    def qmin(self):
        return self.fmt.qmin

    @property
    def qmax(self):
        return self.fmt.qmax


def make_quantizer(fmt: QFormat, lo: np.ndarray, hi: np.ndarray, floor: float) -> TensorQ:
    """Scale and zero point from a calibrated range [lo, hi] (per channel, shape (C,))."""
    lo = np.asarray(lo, np.float64)
    hi = np.asarray(hi, np.float64)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise IntssmError("calibrated range contains NaN or inf (are the weights finite?)")
    if not fmt.per_channel:
        lo = np.full_like(lo, lo.min())
        hi = np.full_like(hi, hi.max())
    if fmt.symmetric:
        amax = np.maximum(np.maximum(np.abs(lo), np.abs(hi)), floor)
        scale = amax / (2 ** (fmt.bits - 1) - 1)
        zero = np.zeros(len(lo), np.int64)
    else:
        lo0, hi0 = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        scale = np.maximum(hi0 - lo0, floor) / (2**fmt.bits - 1)
        zero = np.clip(round_half_up(-lo0 / scale), 0, 2**fmt.bits - 1).astype(np.int64)
    return TensorQ(fmt, scale, zero)


def gelu(v: np.ndarray) -> np.ndarray:
    """Exact GELU, 0.5 v (1 + erf(v / sqrt 2)), as torch.nn.functional.gelu computes it."""
    from scipy.special import erf

    return 0.5 * v * (1.0 + erf(v / math.sqrt(2.0)))


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def build_lut(fn, src: TensorQ, dst: TensorQ) -> np.ndarray:
    """Table over every source code q in [qmin, qmax]: clamp(round(fn(s_src (q - z_src)) / s_dst) + z_dst)."""
    q = np.arange(src.qmin, src.qmax + 1, dtype=np.float64)
    v = fn(src.scale[0] * (q - src.zero[0]))
    out = round_half_up(v / dst.scale[0]) + dst.zero[0]
    return np.clip(out, dst.qmin, dst.qmax).astype(np.int64)


ACT_FLOOR = 1e-3  # smallest activation range: avoids absurd scales for dead channels
W_FLOOR = 1e-8


@dataclass
class Datapath:
    """All integer constants of the datapath except the weight codes, plus the weight quantizers.

    ``tq[name]`` are the quantizers (per layer ``l{i}.name``); ``sites[name] = (M (T, C), S (C,))``;
    ``luts[name]`` are lookup tables. Built only by :func:`build_datapath`.
    """

    cfg: ModelConfig
    qcfg: QuantConfig
    seq_len: int
    tq: dict = field(default_factory=dict)
    sites: dict = field(default_factory=dict)
    luts: dict = field(default_factory=dict)
    bounds: dict = field(default_factory=dict)  # site -> largest |accumulator| (proof of no overflow)


def calibrated_range_keys(cfg: ModelConfig) -> list[str]:
    keys = ["enc_w", "h0"]
    for i in range(cfg.n_layers):
        keys += [f"l{i}.{n}" for n in ("A_re", "A_im", "B", "C", "D", "x_re", "x_im", "y", "act", "mix_w", "glu", "h")]
    return keys + ["pool", "dec_w", "logits"]


def build_datapath(cfg: ModelConfig, qcfg: QuantConfig, ranges: dict, seq_len: int) -> Datapath:
    """Scales, zero points, multipliers, shifts and LUTs from calibrated ``ranges[key] = (lo, hi)``.

    Also proves, site by site, that no accumulator can reach 2**53 (see :data:`EXACT_LIMIT`).
    """
    qcfg.validate()
    if not isinstance(seq_len, int) or seq_len < 1:
        raise IntssmError(f"sequence length must be a positive integer, got {seq_len!r}")
    missing = [k for k in calibrated_range_keys(cfg) if k not in ranges]
    if missing:
        raise IntssmError(f"quantization ranges missing for {missing[:4]}")
    dp = Datapath(cfg, qcfg, seq_len)
    nl = cfg.n_layers

    def q(key, comp, floor):
        lo, hi = ranges[key]
        t = make_quantizer(getattr(qcfg, comp), lo, hi, floor)
        dp.tq[key] = t
        return t

    T = site_term_bounds(cfg, qcfg, seq_len)

    def site(name, ratios, out: TensorQ):
        terms_bound, bias_bound = T[name.split(".")[-1]]
        r = np.stack([np.broadcast_to(np.asarray(x, np.float64), (len(out.scale),)) for x in ratios])
        M, S = quantize_multiplier(r, name)
        dither = qcfg.state_rounding == "dither" and name.split(".")[-1] in ("x_re", "x_im")
        bound = site_bound(name, terms_bound, bias_bound, M, S, dither)
        dp.sites[name] = (M, S)
        dp.bounds[name] = bound

    encw = q("enc_w", "enc_w", W_FLOOR)
    h_in = q("h0", "h", ACT_FLOOR)
    site("enc", [encw.scale * INPUT_SCALE / h_in.scale[0]], h_in)
    for i in range(nl):
        p = f"l{i}."
        shared = qcfg.complex_scale == "shared"
        if shared:  # one quantizer for both parts: the union of their ranges
            lo = np.minimum(ranges[p + "A_re"][0], ranges[p + "A_im"][0])
            hi = np.maximum(ranges[p + "A_re"][1], ranges[p + "A_im"][1])
            Are = Aim = make_quantizer(qcfg.A_re, lo, hi, W_FLOOR)
            dp.tq[p + "A_re"], dp.tq[p + "A_im"] = Are, Aim
        else:
            Are, Aim = q(p + "A_re", "A_re", W_FLOOR), q(p + "A_im", "A_im", W_FLOOR)
        Bq, Cq, Dq = q(p + "B", "B", W_FLOOR), q(p + "C", "C", W_FLOOR), q(p + "D", "D", W_FLOOR)
        lo, hi = ranges[p + "x_re"]
        m = qcfg.state_clip * np.maximum(np.abs(lo), np.abs(hi))
        lo, hi = ranges[p + "x_im"]
        mi = qcfg.state_clip * np.maximum(np.abs(lo), np.abs(hi))
        if shared:
            m = mi = np.maximum(m, mi)
        xre = make_quantizer(qcfg.x_re, -m, m, ACT_FLOOR)
        xim = xre if shared else make_quantizer(qcfg.x_im, -mi, mi, ACT_FLOOR)
        dp.tq[p + "x_re"], dp.tq[p + "x_im"] = xre, xim
        yq, aq = q(p + "y", "y", ACT_FLOOR), q(p + "act", "act", ACT_FLOOR)
        mixw, gq = q(p + "mix_w", "mix_w", W_FLOOR), q(p + "glu", "glu", ACT_FLOOR)
        sq = TensorQ(qcfg.sig, np.array([1.0 / (2**qcfg.sig.bits - 1)]), np.zeros(1, np.int64))
        dp.tq[p + "sig"] = sq
        h_out = q(p + "h", "h", ACT_FLOOR)
        # the terms' ratios in the order of site_term_bounds
        # shared scales: the Abar terms' ratios are both Abar's scale, exactly (no float round trip)
        site(p + "x_re", [Are.scale, Aim.scale if shared else Aim.scale * xim.scale / xre.scale,
                          Bq.scale * h_in.scale[0] / xre.scale], xre)
        site(p + "x_im", [Are.scale, Aim.scale if shared else Aim.scale * xre.scale / xim.scale,
                          Bq.scale * h_in.scale[0] / xim.scale], xim)
        site(p + "y", [2 * Cq.scale * xre.scale / yq.scale[0], 2 * Cq.scale * xim.scale / yq.scale[0], Dq.scale * h_in.scale[0] / yq.scale[0]], yq)
        dp.luts[p + "gelu"] = build_lut(gelu, yq, aq)
        site(p + "glu", [mixw.scale * aq.scale[0] / gq.scale[0]], gq)
        dp.luts[p + "sig"] = build_lut(sigmoid, gq, sq)
        site(p + "h", [h_in.scale[0] / h_out.scale[0], gq.scale[0] * sq.scale[0] / h_out.scale[0]], h_out)
        h_in = h_out
    pq = q("pool", "pool", ACT_FLOOR)
    L = seq_len if cfg.pool == "mean" else 1
    site("pool", [h_in.scale[0] / (L * pq.scale[0])], pq)
    decw, lq = q("dec_w", "dec_w", W_FLOOR), q("logits", "logits", ACT_FLOOR)
    site("logits", [decw.scale * pq.scale[0] / lq.scale[0]], lq)
    return dp
