"""The one description of the quantized datapath, read by the Torch model, the exporter and the simulator.

A :class:`QuantConfig` says, per component, how it is quantized (bits, symmetric or asymmetric,
per-tensor or per-channel, and the range policy: min/max, a percentile, or the clip that minimises
the quantization MSE on calibration samples). Calibrated ranges turn it into a :class:`Datapath`: for every tensor
a scale, a zero point and a code range; for every *site* (a place where integers are rescaled)
integer multipliers ``M`` and a shift ``S``; and the lookup tables of the nonlinearities.
docs/datapath.md gives the arithmetic of every site.

Quantizer of a tensor T:  real ~= s_T * (q - z_T),  q in [qmin, qmax]
  symmetric:  z = 0,  q in [-2**(b-1), 2**(b-1) - 1],  s = max|T| / (2**(b-1) - 1)
  asymmetric: q in [0, 2**b - 1],  s = (max(T,0) - min(T,0)) / (2**b - 1),  z = round(-min/s)
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from intssm.errors import IntssmError
from intssm.datapath.fixedpoint import EXACT_LIMIT, quantize_multiplier, round_half_up
from intssm.datapath.modelconfig import ModelConfig

DATAPATH_VERSION = 1
WEIGHTS = ("enc_w", "A_re", "A_im", "B", "C", "D", "mix_w", "dec_w")
ACTIVATIONS = ("h", "x_re", "x_im", "y", "act", "glu", "sig", "pool", "logits")
PER_CHANNEL_OK = set(WEIGHTS) | {"x_re", "x_im"}
BIAS_BITS = 32  # default: biases are int32 at the scale of the accumulator they are added to
INPUT_SCALE = 1.0 / 255.0  # the raw uint8 pixel p enters as itself: real input = p / 255


@dataclass(frozen=True)
class QFormat:
    bits: int = 8  # 2..16
    symmetric: bool = True  # False: unsigned codes with a zero point
    per_channel: bool = False  # per head (SSM params, state) or per output row (matrices)
    range: str = "minmax"  # "minmax" | "pNN.N" (percentile, e.g. p99.99) | "mse" (see apply_range_policies)

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def centered_bound(self) -> int:
        """Largest |q - z| over every code and zero point."""
        return 2 ** (self.bits - 1) if self.symmetric else 2**self.bits - 1


@dataclass(frozen=True)
class QuantConfig:
    """How each component is quantized. Names follow docs/datapath.md."""

    enc_w: QFormat = QFormat()  # encoder weight (H, d_input)
    A_re: QFormat = QFormat()  # Re Abar (H, N/2)
    A_im: QFormat = QFormat()  # Im Abar (H, N/2)
    B: QFormat = QFormat()  # Bbar, real and imaginary parts share it
    C: QFormat = QFormat()  # C, real and imaginary parts share it
    D: QFormat = QFormat()  # skip (H)
    mix_w: QFormat = QFormat()  # GLU mixing weight (2H, H)
    dec_w: QFormat = QFormat()  # decoder weight (d_output, H)
    h: QFormat = QFormat()  # residual stream (encoder output, each layer's output)
    x_re: QFormat = QFormat()  # Re state
    x_im: QFormat = QFormat()  # Im state
    y: QFormat = QFormat()  # SSM output
    act: QFormat = QFormat(symmetric=False)  # GELU output
    glu: QFormat = QFormat()  # both halves of the mixing output
    sig: QFormat = QFormat(symmetric=False)  # sigmoid output, fixed scale 1 / (2**b - 1)
    pool: QFormat = QFormat()  # pooled features
    logits: QFormat = QFormat(bits=16)  # final integer logits
    state_clip: float = 1.0  # state range = state_clip * calibrated max |x|, clipped every step
    # Abar codes chosen so that every mode's quantized |Abar| < 1: rounding can put a slow mode on or
    # outside the unit circle, where its state grows until the clip holds it (QuantS4D.stable_abar)
    stable_abar: bool = False
    # how the state update's shift rounds (docs/datapath.md, step 2): "nearest" adds 2**(S-1) (half
    # up); "dither" adds a Weyl-sequence offset in [0, 2**S) that changes with the step and the mode
    # (fixedpoint.weyl_offset), so a slow mode's small increments are not all rounded away
    state_rounding: str = "nearest"
    # stored width of every bias (enc_b, mix_b, dec_b): signed codes at the scale of the accumulator
    # they are added to, saturated to [-2**(b-1), 2**(b-1) - 1] when quantized
    bias_bits: int = BIAS_BITS
    # float data only (raw uint8 data enter as themselves): the input quantizer's bits (2..8) and
    # range policy per channel, "minmax" or a percentile (intssm.datapath.inputq)
    input_bits: int = 8
    input_range: str = "minmax"
    # "separate": Re and Im of Abar, and of the state x, have quantizers of their own (the paper's
    # scheme); "shared": one per-channel scale for both parts of each (ranges joined), so the state
    # update's two Abar terms, and the Re and Im updates, share one multiplier and shift
    # (docs/datapath.md, step 2): a complex multiply-accumulate then one requantization
    complex_scale: str = "separate"

    @property
    def bias_bound(self) -> int:
        """Largest |bias code|: 2**(bias_bits - 1)."""
        return 2 ** (self.bias_bits - 1)

    def validate(self) -> "QuantConfig":
        for name in WEIGHTS + ACTIVATIONS:
            f = getattr(self, name)
            if not isinstance(f, QFormat):
                raise IntssmError(f"quant config: {name} must be a format, got {f!r}")
            if not isinstance(f.bits, int) or isinstance(f.bits, bool) or not 2 <= f.bits <= 16:
                raise IntssmError(f"quant config: {name}.bits must be an integer in 2..16, got {f.bits!r}")
            for flag in ("symmetric", "per_channel"):
                if not isinstance(getattr(f, flag), bool):
                    raise IntssmError(f"quant config: {name}.{flag} must be true or false, got {getattr(f, flag)!r}")
            if f.per_channel and name not in PER_CHANNEL_OK:
                raise IntssmError(f"quant config: {name} cannot be per-channel (only weights and the state x)")
            if not isinstance(f.range, str) or parse_range(f.range) is None:
                raise IntssmError(f"quant config: {name}.range must be 'minmax', 'mse' or a percentile like 'p99.9' "
                                  f"(50 < p < 100), got {f.range!r}")
        if self.sig.symmetric:
            raise IntssmError("quant config: sig must be asymmetric (unsigned codes in [0, 1])")
        if self.sig.range != "minmax":
            raise IntssmError("quant config: sig has a fixed range [0, 1]; its range policy must be 'minmax'")
        if not (isinstance(self.state_clip, (int, float)) and not isinstance(self.state_clip, bool) and 0 < self.state_clip <= 16 and math.isfinite(self.state_clip)):
            raise IntssmError(f"quant config: state_clip must be in (0, 16], got {self.state_clip!r}")
        if not isinstance(self.stable_abar, bool):
            raise IntssmError(f"quant config: stable_abar must be true or false, got {self.stable_abar!r}")
        if self.state_rounding not in STATE_ROUNDINGS:
            raise IntssmError(f"quant config: state_rounding must be one of {list(STATE_ROUNDINGS)}, "
                              f"got {self.state_rounding!r}")
        if not isinstance(self.bias_bits, int) or isinstance(self.bias_bits, bool) or not 2 <= self.bias_bits <= 32:
            raise IntssmError(f"quant config: bias_bits must be an integer in 2..32, got {self.bias_bits!r}")
        if self.complex_scale not in COMPLEX_SCALES:
            raise IntssmError(f"quant config: complex_scale must be one of {list(COMPLEX_SCALES)}, got {self.complex_scale!r}")
        if self.complex_scale == "shared" and (self.A_re != self.A_im or self.x_re != self.x_im):
            raise IntssmError("quant config: complex_scale 'shared' needs A_re and A_im, and x_re and x_im, of one format each")
        if isinstance(self.input_bits, bool) or not isinstance(self.input_bits, int) or not 2 <= self.input_bits <= 8:
            raise IntssmError(f"quant config: input_bits must be an integer in 2..8, got {self.input_bits!r}")
        if not isinstance(self.input_range, str) or parse_range(self.input_range) in (None, ("mse",)):
            raise IntssmError(f"quant config: input_range must be 'minmax' or a percentile like 'p99.9', got {self.input_range!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        if not isinstance(d, dict):
            raise IntssmError("quant config must be a JSON object")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise IntssmError(f"quant config: unknown component(s) {sorted(unknown)}")
        kw = {}
        for k, v in d.items():
            if k in SCALARS:
                kw[k] = v
                continue
            if isinstance(v, int) and not isinstance(v, bool):
                v = {"bits": v}
            if not isinstance(v, dict):
                raise IntssmError(f"quant config: {k} must be an object like {{'bits': 8}}")
            bad = set(v) - {"bits", "symmetric", "per_channel", "range"}
            if bad:
                raise IntssmError(f"quant config: {k} has unknown field(s) {sorted(bad)}")
            kw[k] = replace(getattr(cls(), k), **v)
        return cls(**kw).validate()

    def with_bits(self, **bits) -> "QuantConfig":
        return replace(self, **{k: replace(getattr(self, k), bits=b) for k, b in bits.items()})

    def policies(self) -> set[str]:
        return {getattr(self, n).range for n in WEIGHTS + ACTIVATIONS}


#: state_rounding values: round half up, or add a Weyl-sequence dither (fixedpoint.weyl_offset)
STATE_ROUNDINGS = ("nearest", "dither")
#: complex_scale values: Re and Im quantized apart, or at one shared scale
COMPLEX_SCALES = ("separate", "shared")

# the config's plain settings (state_clip, stable_abar, bias_bits, ...): every field that is not a QFormat
SCALARS = tuple(f.name for f in fields(QuantConfig) if f.name not in WEIGHTS + ACTIVATIONS)


def parse_range(r: str):
    """("minmax",) | ("mse",) | ("percentile", p) for a valid range policy string, else None."""
    if r in ("minmax", "mse"):
        return (r,)
    if isinstance(r, str) and re.fullmatch(r"p[0-9]+(\.[0-9]+)?", r):
        try:
            p = float(r[1:])
        except ValueError:
            return None
        if 50 < p < 100:
            return ("percentile", p)
    return None


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


def _all(fmt: QFormat, names) -> dict:
    return {n: fmt for n in names}


PRESETS: dict[str, QuantConfig] = {
    "w8a8": QuantConfig(),
    "w8a8-perhead": QuantConfig(**{n: QFormat(per_channel=True) for n in ("A_re", "A_im", "B", "C", "D", "x_re", "x_im")}),
    "w16a16": QuantConfig(**_all(QFormat(bits=16), WEIGHTS + ("h", "x_re", "x_im", "y", "glu", "pool", "logits")),
                          act=QFormat(bits=16, symmetric=False), sig=QFormat(bits=16, symmetric=False)),
    # 8-bit everywhere except Abar and the state (12 bits, per head): what PTQ needs (tools/reproduce_paper.py)
    "w8a8-state12": QuantConfig(**{n: QFormat(12, per_channel=True) for n in ("A_re", "A_im", "x_re", "x_im")},
                                **{n: QFormat(per_channel=True) for n in ("B", "C", "D")}),
    # sub-8-bit state: Abar and x at 6 bits per head, the rest 8 bits (needs QAT: PTQ collapses below 11 bits)
    "w8a8-state6": QuantConfig(**{n: QFormat(6, per_channel=True) for n in ("A_re", "A_im", "x_re", "x_im")},
                               **{n: QFormat(per_channel=True) for n in ("B", "C", "D")}),
    # the paper's heterogeneous scheme: Bbar, C, D at 4 bits, activations at 6, A and x at 8 with
    # separate real/imaginary quantizers, state clipped every step
    "paper-hetero": QuantConfig(
        B=QFormat(4, per_channel=True), C=QFormat(4, per_channel=True), D=QFormat(4, per_channel=True),
        A_re=QFormat(8, per_channel=True), A_im=QFormat(8, per_channel=True),
        x_re=QFormat(8, per_channel=True), x_im=QFormat(8, per_channel=True),
        h=QFormat(6), y=QFormat(6), act=QFormat(6, symmetric=False), glu=QFormat(6), sig=QFormat(6, symmetric=False),
        pool=QFormat(8),
    ),
}
# the heterogeneous scheme with a narrower state: steps of progressive QAT towards a sub-8-bit
# A and x (``intssm qat q.pt --config hetero-state7``, then ``hetero-state6``)
for _b in (7, 6):
    PRESETS[f"hetero-state{_b}"] = replace(
        PRESETS["paper-hetero"], **{n: QFormat(_b, per_channel=True) for n in ("A_re", "A_im", "x_re", "x_im")})
# the heterogeneous scheme with the state at 10 bits and stable Abar codes: the ablation in
# docs/results.md finds the 8-bit state, not Abar or the activations, to be what limits paper-hetero
PRESETS["hetero-x10"] = replace(PRESETS["paper-hetero"], x_re=QFormat(10, per_channel=True),
                                x_im=QFormat(10, per_channel=True), stable_abar=True)
# hetero-x10 at the paper's memory (weights and biases <= float32 / 6.3): B and C at 3 bits, the
# mixing weights at 5 bits per row, 16-bit biases. Reached from a hetero-x10 model by progressive
# QAT (hetero-x10 -> B, C at 3 bits -> this; docs/results.md)
PRESETS["hetero-3b-x10"] = replace(PRESETS["hetero-x10"], B=QFormat(3, per_channel=True),
                                   C=QFormat(3, per_channel=True), mix_w=QFormat(5, per_channel=True), bias_bits=16)
# the default model's config: hetero-3b-x10 with a 12-bit state per head (97.13% after frozen-Abar QAT)
PRESETS["hetero-3b-x12"] = replace(PRESETS["hetero-3b-x10"], x_re=QFormat(12, per_channel=True),
                                   x_im=QFormat(12, per_channel=True))
# the default's config with one scale for Re and Im of Abar and of the state (complex_scale): the state
# update becomes a complex multiply-accumulate and one requantization, which a 32-bit MCU runs with
# a third of the registers and multiplies (docs/deploy.md)
PRESETS["hetero-3b-x12-shared"] = replace(PRESETS["hetero-3b-x12"], complex_scale="shared")
# hetero-3b-x10 with an 8-bit state rounded with the Weyl dither (state_rounding): the dither keeps
# the small increments that rounding half up loses at 8 bits (96.54% after QAT; docs/results.md)
PRESETS["hetero-3b-x8-dither"] = replace(PRESETS["hetero-3b-x10"], x_re=QFormat(8, per_channel=True),
                                         x_im=QFormat(8, per_channel=True), state_rounding="dither")
# Abar and the state at 6 bits (the curated a6-x6 model, 96.19% after frozen-Abar QAT with --equalize 1):
# Abar asymmetric per head (6-bit codes and a zero point), the state dithered; Bbar, C, D, the
# activations and the residual stream at 8 bits; the mixing weights and biases as in hetero-3b-x10
PRESETS["a6asym-x6-dither"] = replace(
    PRESETS["hetero-3b-x10"], A_re=QFormat(6, symmetric=False, per_channel=True),
    A_im=QFormat(6, symmetric=False, per_channel=True), x_re=QFormat(6, per_channel=True),
    x_im=QFormat(6, per_channel=True), B=QFormat(per_channel=True), C=QFormat(per_channel=True),
    D=QFormat(per_channel=True), h=QFormat(), y=QFormat(), act=QFormat(symmetric=False), glu=QFormat(),
    sig=QFormat(symmetric=False), state_rounding="dither")


def get_config(name_or_path: str) -> QuantConfig:
    """A preset name or a JSON file (``{"A_re": {"bits": 6}, ..., "state_clip": 1.0}``)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    from pathlib import Path

    p = Path(name_or_path)
    if not p.is_file():
        raise IntssmError(f"unknown quant config {name_or_path!r}; presets: {', '.join(PRESETS)}, or a JSON file")
    from intssm import jsonfile

    d = jsonfile.load(p, "quant config")
    if not isinstance(d, dict):
        raise IntssmError(f"{p}: a quant config must be a JSON object, got {type(d).__name__}")
    return QuantConfig.from_dict(d)


# ----------------------------------------------------------------------------- quantizers ---

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


# ------------------------------------------------------------------------------ datapath ---

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
        # x_re' = Are x_re - Aim x_im + Bre u ;  x_im' = Are x_im + Aim x_re + Bim u
        "x_re": ([cb("A_re") * cb("x_re"), cb("A_im") * cb("x_im"), cb("B") * cb("h")], 0),
        "x_im": ([cb("A_re") * cb("x_im"), cb("A_im") * cb("x_re"), cb("B") * cb("h")], 0),
        # y = 2 (sum Cre x_re - sum Cim x_im) + D u
        "y": ([N2 * cb("C") * cb("x_re"), N2 * cb("C") * cb("x_im"), cb("D") * cb("h")], 0),
        "glu": ([H * cb("mix_w") * cb("act")], bias),
        # h_out = h_in + glu_a * sigmoid(glu_b)
        "h": ([cb("h"), cb("glu") * cb("sig")], 0),
        "pool": ([L * cb("h")], 0),
        "logits": ([H * cb("dec_w") * cb("pool")], bias),
    }


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
    for c in range(M.shape[1]):
        acc = sum(int(b) * int(M[t, c]) for t, b in enumerate(terms_bound)) + bias_bound * int(M[0, c])
        acc += ((1 << int(S[c])) - 1) if dither else (1 << int(S[c] - 1)) if S[c] > 0 else 0
        bound = max(bound, acc)
    if bound >= EXACT_LIMIT:
        raise IntssmError(f"datapath site {name}: accumulator may reach 2**{math.log2(bound):.1f} >= 2**53; "
                          "use fewer bits or a smaller model")
    return bound


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


def ranges_to_json(ranges: dict) -> dict:
    return {k: [np.asarray(lo, np.float64).tolist(), np.asarray(hi, np.float64).tolist()] for k, (lo, hi) in ranges.items()}


def ranges_from_json(d: dict) -> dict:
    return {k: (np.asarray(v[0], np.float64), np.asarray(v[1], np.float64)) for k, v in d.items()}
