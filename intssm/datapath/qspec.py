"""The quant config: how each component of the datapath is quantized (bits, symmetric or
asymmetric, per-tensor or per-channel, and the range policy: min/max, a percentile, or the clip
that minimises the quantization MSE on calibration samples), the datapath-wide settings, and the
named presets.

Calibrated ranges (:mod:`intssm.datapath.ranges`) turn a config into the datapath's integer
constants (:mod:`intssm.datapath.build`): for every tensor a scale, a zero point and a code range;
for every *site* (a place where integers are rescaled) integer multipliers ``M`` and a shift ``S``,
proved free of overflow (:mod:`intssm.datapath.bounds`); and the lookup tables of the
nonlinearities. docs/datapath.md gives the arithmetic of every site.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace

from intssm.errors import IntssmError

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


def preset_table() -> dict:
    """Every preset as one row (``intssm configs``): per component ``{bits}{s|a}[/ch][@policy]``
    (s symmetric, a asymmetric, /ch per channel, @ a range policy other than min/max), then the scalars."""
    def short(f: QFormat) -> str:
        return f"{f.bits}{'s' if f.symmetric else 'a'}{'/ch' if f.per_channel else ''}" + ("" if f.range == "minmax" else f"@{f.range}")

    return {name: {n: short(getattr(q, n)) for n in WEIGHTS + ACTIVATIONS} | {k: getattr(q, k) for k in SCALARS}
            for name, q in PRESETS.items()}
