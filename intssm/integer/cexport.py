"""C export: the integer model as portable C99 that runs bit-exactly like the simulator.

:func:`write_c` turns the integer arrays of a model (named and re-proved by :mod:`intssm.datapath.layout`) into

* ``<prefix>_model.h`` -- the library API: dimensions, the state struct and its size, the entry
  points (reset, step, the streaming readout, classify, state access, and for float-data models
  the input path), ``extern "C"`` for C++; every name starts with the prefix (default ``intssm``);
* ``<prefix>_model.c`` -- every constant as a ``static const`` table of the narrowest C integer type
  that holds its values, and the step / readout functions, which follow ``_run_one`` in
  :mod:`intssm.integer.sim` site by site (same centred operands, same int64 accumulators, same
  rounding and saturation, same counters); the input path from :mod:`intssm.integer.cinput`;
* ``main.c`` -- a tiny example: a sequence of any length on stdin, logits and class on stdout;
* ``README.md`` -- the integration steps and build flags (:mod:`intssm.integer.cdoc`).

This module holds the storage plan (:func:`plan`), the sites' C arithmetic (:func:`site_widths`)
and the emission of the model's C. The generated model code includes ``<stdint.h>`` only and
calls no library function: no floating-point arithmetic, no ``malloc``, no mutable globals
(``.bss`` and ``.data`` are empty; all state is in the caller's :c:type:`intssm_state`).
Portability notes are in the header comment of the generated ``.c``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from intssm.datapath import layout
from intssm import outputs
from intssm.errors import IntssmError

H_FILE, C_FILE, MAIN_FILE = "intssm_model.h", "intssm_model.c", "main.c"  # the files of the default prefix

#: Candidate C types, narrowest first: (name, bytes, min, max).
_CTYPES = (
    ("int8_t", 1, -(2**7), 2**7 - 1),
    ("uint8_t", 1, 0, 2**8 - 1),
    ("int16_t", 2, -(2**15), 2**15 - 1),
    ("uint16_t", 2, 0, 2**16 - 1),
    ("int32_t", 4, -(2**31), 2**31 - 1),
    ("uint32_t", 4, 0, 2**32 - 1),
    ("int64_t", 8, -(2**63), 2**63 - 1),
)

#: Every table the C model holds: all arrays of the layout except ``qrange`` and ``x_dither``,
#: which become compile-time constants (``QMIN_*``/``QMAX_*``, ``INTSSM_DITHER``).
TABLES = tuple(k for k in layout.NAMES if k not in ("qrange", "x_dither"))


def _qr_macro(row: str) -> str:
    """Macro suffix of a ``qrange`` row: ``x_re`` -> ``XRE``."""
    return row.upper().replace("_", "")


def ctype_for(lo: int, hi: int) -> tuple[str, int]:
    """(C type, bytes) of the narrowest exact-width integer type holding [lo, hi]."""
    for name, nb, tmin, tmax in _CTYPES:
        if tmin <= lo and hi <= tmax:
            return name, nb
    raise IntssmError(f"values in [{lo}, {hi}] do not fit a 64-bit integer")


def _lit(v: int) -> str:
    """A C integer constant of value ``v`` that is well-typed in any initializer."""
    if -(2**31) < v < 2**31:
        return str(v)
    if v == -(2**31):
        return "(-2147483647 - 1)"
    if 0 <= v < 2**32:
        return f"UINT32_C({v})"
    return f"INT64_C({v})"


# ------------------------------------------------------------------------------ storage plan ---

#: Largest width a packed field may have: one unaligned 32-bit window read, shifted right by up to 7
#: bits, still holds it.
MAX_PACKED_WIDTH = 25
#: The per-mode weights the state loop reads together, packed as one record per mode.
MODE_RECORD = ("A_re", "A_im", "B_re", "B_im", "C_re", "C_im")
#: Bytes of padding after the packed blob and the packed state: a 32-bit window read at the last
#: field's byte stays inside the array.
WINDOW_PAD = 3


@dataclass(frozen=True)
class Store:
    """How one constant table is held in flash.

    ``kind``: ``fold`` (every value equal: a compile-time constant, no bytes; only zero points of
    symmetric formats, which the memory accounting does not count either), ``native`` (an array of
    the C type ``ctype``) or ``bits`` (packed at ``width`` bits per value, little-endian bit order,
    in the ``model_bits`` blob at byte ``offset``)."""

    name: str
    kind: str
    width: int
    signed: bool
    ctype: str
    count: int
    nbytes: int
    offset: int = 0
    value: int = 0


def declared_range(name: str, qcfg) -> tuple[int, int]:
    """[lo, hi] every value of table ``name`` is proved to lie in (:func:`intssm.datapath.layout.validate`)."""
    from intssm.datapath.fixedpoint import MAX_SHIFT, MULT_BITS

    spec = layout.SPEC[name]
    if spec.role in ("code", "lut", "zero"):
        f = getattr(qcfg, spec.fmt)
        return (0, 0) if spec.role == "zero" and f.symmetric else (f.qmin, f.qmax)
    if spec.role == "bias":
        return -qcfg.bias_bound, qcfg.bias_bound - 1
    if spec.role == "multiplier":
        return 0, 2**MULT_BITS - 1
    if spec.role == "shift":
        return 0, MAX_SHIFT
    raise KeyError(name)


def width_of(lo: int, hi: int) -> tuple[int, bool]:
    """(bits, signed) of the narrowest two's-complement (lo < 0) or unsigned field holding [lo, hi]."""
    if lo < 0:
        return max((-lo - 1).bit_length(), hi.bit_length()) + 1, True
    return max(1, hi.bit_length()), False


@dataclass
class Plan:
    """Where every constant lives (:class:`Store` by table name, plus the per-mode record of
    :data:`MODE_RECORD` if packed) and the packed state's record."""

    stores: dict
    record: dict | None  # {"offset", "fields": [(name, width, signed, bit)], "bits", "group"}: one mode's weights
    blob_bytes: int
    x: dict  # packed state record: {"wr", "wi", "sr", "si", "bits" per mode, "group": modes per byte-aligned group}

    @property
    def flash_bytes(self) -> int:
        """Bytes of constant data: native tables, the packed blob and its window padding."""
        native = sum(st.nbytes for st in self.stores.values() if st.kind == "native")
        return native + (self.blob_bytes + WINDOW_PAD if self.blob_bytes else 0)


#: How the state is held: ``packed`` at its bit widths (the accounted bytes), or ``halves``: each
#: mode's Re and Im codes as the two 16-bit halves of a word, which a Cortex-M4's dual 16-bit
#: multiplies (SMUSD, SMUADX) read directly (faster; more RAM when the state is narrower than 16 bits).
STATE_LAYOUTS = ("packed", "halves")


def plan(a: dict, qcfg, state_layout: str = "packed") -> Plan:
    """The storage of model ``a`` (validated arrays) for quant config ``qcfg``."""
    if state_layout not in STATE_LAYOUTS:
        raise IntssmError(f"state layout must be one of {', '.join(STATE_LAYOUTS)}, got {state_layout!r}")
    stores, offset = {}, 0
    fields = {k: (width_of(*declared_range(k, qcfg)), int(a[k].size)) for k in TABLES}
    rec_fields, bit = [], 0
    for k in MODE_RECORD:
        (w, sg), _ = fields[k]
        rec_fields.append((k, w, sg, bit))
        bit += w
    g = math.gcd(bit, 8)
    record = None
    # one 32-bit window per mode: the record plus its largest bit offset in a byte (8 - gcd) fits
    if bit + 8 - g <= 32 and any(w not in (8, 16) for _, w, _, _ in rec_fields):
        n = int(a["A_re"].size)
        record = {"offset": 0, "fields": rec_fields, "bits": bit, "group": 8 // g}
        offset = -(-n * bit // 8)
    for k in TABLES:
        if record is not None and k in MODE_RECORD:
            continue
        (w, sg), count = fields[k]
        lo, hi = declared_range(k, qcfg)
        ct, nb = ctype_for(lo, hi)
        if lo == hi:
            stores[k] = Store(k, "fold", 0, lo < 0, ct, count, 0, value=lo)
        elif w == 8 * nb or w > MAX_PACKED_WIDTH:
            stores[k] = Store(k, "native", 8 * nb, lo < 0, ct, count, count * nb)
        else:
            nbytes = -(-count * w // 8)
            stores[k] = Store(k, "bits", w, sg, ct, count, nbytes, offset=offset)
            offset += nbytes
    qr = a["qrange"]
    (wr, sr), (wi, si) = width_of(int(qr[layout.R_XRE, 0]), int(qr[layout.R_XRE, 1])), \
        width_of(int(qr[layout.R_XIM, 0]), int(qr[layout.R_XIM, 1]))
    if state_layout == "halves":  # 16-bit halves hold every code (formats have at most 16 bits)
        wr = wi = 16
        sr = si = True  # sign-extended halves (an unsigned 16-bit code does not fit; refused below)
        if int(qr[layout.R_XRE, 1]) > 32767 or int(qr[layout.R_XIM, 1]) > 32767:
            raise IntssmError("state layout 'halves' needs signed 16-bit state codes; this state is unsigned 16-bit")
    rx = wr + wi
    # a mode's state: packed at rx bits when whole records do not fill bytes (and one window holds
    # one), else in whole bytes
    bits = rx if rx % 8 and rx + 8 - math.gcd(rx, 8) <= 32 else 8 * -(-rx // 8)
    x = {"wr": wr, "wi": wi, "sr": sr, "si": si, "bits": bits, "group": 8 // math.gcd(bits, 8)}
    return Plan(stores, record, offset, x)


def state_bytes(p: Plan, n_modes: int) -> int:
    """Bytes of the packed state array: every record, plus window padding after the last."""
    return -(-n_modes * p.x["bits"] // 8) + WINDOW_PAD


def table_layout(arrays: dict, qcfg) -> dict:
    """name -> (storage, element count, bytes) of every constant table :func:`write_c` emits for
    quant config ``qcfg`` (a QuantConfig or its dict); storage is a C type, ``bits:W`` (packed at W
    bits), ``record:W`` (W bits of the packed per-mode record) or ``folded``."""
    from intssm.datapath.qspec import QuantConfig

    p = plan(arrays, qcfg if isinstance(qcfg, QuantConfig) else QuantConfig.from_dict(qcfg))
    out = {}
    for k in TABLES:
        st = p.stores.get(k)
        if st is None:
            n = int(arrays[k].size)
            w = next(fw for f, fw, _, _ in p.record["fields"] if f == k)
            out[k] = (f"record:{w}", n, n * w / 8)
        else:
            out[k] = ({"fold": "folded", "native": st.ctype, "bits": f"bits:{st.width}"}[st.kind], st.count, st.nbytes)
    return out


def rodata_bytes_estimate(arrays: dict, qcfg) -> int:
    """Bytes of constant data (flash / ``.rodata``) the C model holds, without alignment padding."""
    from intssm.datapath.qspec import QuantConfig

    return plan(arrays, qcfg if isinstance(qcfg, QuantConfig) else QuantConfig.from_dict(qcfg)).flash_bytes


# --------------------------------------------------------------------------- site arithmetic ---

INT32_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class SiteWidth:
    """The C arithmetic of one requantization site kind, from its proved bounds (all layers)."""

    kind: str
    term_bound: int  # largest |term| before its multiplier (a product or dot product of centred codes)
    acc_bound: int  # largest |accumulator| (terms times multipliers, plus the rounding offset)
    max_shift: int
    min_shift: int
    term64: bool  # terms need int64
    acc64: bool  # the accumulator needs int64 (a 32 x 32 -> 64-bit multiply-accumulate)
    post64: bool = False  # a rounded result may pass 2^30: rounded in int64, clamped to +-2^30 before the zero point

    @property
    def wide_shift(self) -> bool:
        return self.max_shift > 31

    def describe(self) -> str:
        acc = "int64 (32x32->64-bit multiply-accumulate)" if self.acc64 and not self.term64 else \
            "int64" if self.acc64 else "int32"
        return (f"{self.kind}: terms {'int64' if self.term64 else 'int32'} (|t| <= 2^{math.log2(max(self.term_bound, 1)):.1f}), "
                f"accumulator {acc} (|acc| <= 2^{math.log2(max(self.acc_bound, 1)):.1f}), shifts <= {self.max_shift}")


def site_widths(a: dict, cfg, qcfg, seq_len: int) -> dict:
    """kind -> :class:`SiteWidth` of every site kind, from :func:`intssm.datapath.bounds.site_bound`
    with the model's own multipliers and shifts. Raises IntssmError where a rounded result could
    leave int32 (the generated code narrows it there)."""
    from intssm.datapath.bounds import site_bound, site_term_bounds

    T = site_term_bounds(cfg, qcfg, seq_len)
    dither = qcfg.state_rounding == "dither"
    out = {}
    for kind, _, _, per_layer in layout.SITES:
        terms, bias = T[kind]
        acc, smax, post, smin = 0, 0, 0, 64
        for i in (range(cfg.n_layers) if per_layer else [None]):
            M, S = layout.site_arrays(a, kind, i)
            d = dither and kind in ("x_re", "x_im")
            acc = max(acc, site_bound(kind, terms, bias, M, S, d))
            smax, smin = max(smax, int(S.max())), min(smin, int(S.min()))
            for c in range(M.shape[1]):
                b = sum(int(t) * int(M[k, c]) for k, t in enumerate(terms)) + bias * int(M[0, c])
                post = max(post, (b + (1 << int(S[c]))) >> int(S[c]))
        tb = max(terms) + bias  # a term with its bias (sites with a bias have one term)
        # the bound includes the rounding offset, 2^(S-1) (2^S - 1 dithered): a shift past 31 is int64 already
        out[kind] = SiteWidth(kind, tb, acc, smax, smin, tb > INT32_LIMIT, acc > INT32_LIMIT, post > 2**30)
    return out


def check(arrays: dict, manifest_like: dict):
    """(arrays re-proved by :func:`intssm.datapath.layout.validate` (int64), dimensions, model config,
    quant config, :func:`site_widths`) of a model for the C export; IntssmError if it cannot be exported."""
    from intssm.datapath.modelconfig import ModelConfig
    from intssm.datapath.qspec import QuantConfig

    try:
        cfg = ModelConfig.from_dict(manifest_like.get("model_config"))
        qcfg = QuantConfig.from_dict(manifest_like.get("quant_config"))
        seq_len = manifest_like.get("seq_len")
        a = layout.validate(arrays, cfg, qcfg, seq_len)
        if manifest_like.get("counters", layout.counter_names(cfg.n_layers)) != layout.counter_names(cfg.n_layers):
            raise IntssmError(f"counters must be the {layout.n_counters(cfg.n_layers)} names of intssm.datapath.layout.counter_names")
        widths = site_widths(a, cfg, qcfg, seq_len)
    except IntssmError as e:
        raise IntssmError(f"C export: {e}") from None
    if not 1 <= seq_len < 2**30:
        raise IntssmError(f"C export: seq_len must lie in 1..2^30 - 1, got {seq_len}")
    N2 = cfg.d_state // 2
    events = cfg.d_model + cfg.n_layers * (2 * cfg.d_model * N2 + 4 * cfg.d_model)  # clamps per step, at most
    pool_bound = (seq_len if cfg.pool == "mean" else 1) * qcfg.h.centered_bound
    qr = a["qrange"]
    dims = {**{f"QR_{k.upper()}": (int(qr[j, 0]), int(qr[j, 1])) for j, k in enumerate(layout.QRANGE_ROWS)},
            "H": cfg.d_model, "N2": N2, "LAYERS": cfg.n_layers, "D_IN": cfg.d_input,
            "D_OUT": cfg.d_output, "MEAN_POOL": int(cfg.pool == "mean"), "SEQ_LEN": seq_len,
            "N_COUNTERS": layout.n_counters(cfg.n_layers), "EXACT_STEPS": (2**32 - 1) // events,
            "POOL_T": "int32_t" if pool_bound <= INT32_LIMIT else "int64_t"}
    dims["MAX_STEPS"] = max_steps(cfg.pool == "mean", seq_len, qcfg.h.centered_bound, dims["POOL_T"])
    return a, dims, cfg, qcfg, widths


#: The step counter of the state saturates here; :func:`max_steps` stays below it.
STEPS_SATURATE = 2**32 - 1


def max_steps(mean_pool: bool, seq_len: int, h_bound: int, pool_t: str) -> int:
    """Steps after a reset for which the C state's arithmetic is proved: any number below the
    saturating step counter with last-step pooling; with mean pooling, as many as the pooling
    accumulator (``pool_t``) holds at |h'| <= ``h_bound`` per step, and (int64) as keep the
    streaming readout's numerator 2 |acc| L + t below 2^63."""
    if not mean_pool:
        return STEPS_SATURATE
    n = INT32_LIMIT // h_bound if pool_t == "int32_t" else 2**62 // (2 * seq_len) // h_bound
    n = min(n, STEPS_SATURATE - 1)
    if n < seq_len:
        raise IntssmError(f"C export: the pooling accumulator cannot hold {seq_len} steps")
    return n


def state_size(p: "Plan", dims: dict, dither: bool) -> tuple[int, int]:
    """(bytes, alignment) of the C state struct: the step counter, the dither phase (if any), the
    packed state, the pooling accumulator, the counters; exact for ABIs that align int32 to 4 and
    int64 to 8 bytes (AAPCS, RISC-V ilp32, x86-64; the generated C checks it when compiled)."""
    align = 8 if dims["POOL_T"] == "int64_t" else 4
    size = 4 + (4 if dither else 0) + state_bytes(p, dims["LAYERS"] * dims["H"] * dims["N2"])
    size += -size % align
    size += align * dims["H"] + 4 * dims["N_COUNTERS"]
    size += -size % align
    return size, align


# ------------------------------------------------------------------------------ generated C ---

def c_initializer(v, indent: str = "", per_line: int = 16, fmt=None) -> str:
    """A brace-nested C initializer for ``v`` (one brace level per dimension); ``fmt`` writes one
    value (default: an integer constant, :func:`_lit`)."""
    fmt = fmt or (lambda x: _lit(int(x)))
    v = np.asarray(v)
    if v.ndim == 1:
        vals = [fmt(x) for x in v]
        lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
        if len(lines) <= 1:
            return "{" + (lines[0] if lines else "") + "}"
        return "{\n" + ",\n".join(indent + "    " + ln for ln in lines) + "\n" + indent + "}"
    inner = [c_initializer(x, indent + "    ", per_line, fmt) for x in v]
    return "{\n" + ",\n".join(indent + "    " + s for s in inner) + "\n" + indent + "}"


def pack_bits(values, width: int) -> bytes:
    """``values`` as ``width``-bit two's-complement fields, value k at bits [k w, (k + 1) w) of a
    little-endian bit string (bit b of the string is bit b % 8 of byte b // 8)."""
    acc = 0
    mask = (1 << width) - 1
    for k, v in enumerate(np.asarray(values, dtype=np.int64).ravel()):
        acc |= (int(v) & mask) << (k * width)
    n = -(-len(np.asarray(values).ravel()) * width // 8)
    return acc.to_bytes(max(n, 1), "little")[:n]


def _blob(a: dict, p: Plan) -> bytes:
    out = bytearray(p.blob_bytes)
    if p.record is not None:
        r = p.record
        rec = np.stack([a[f].ravel() for f, _, _, _ in r["fields"]], axis=1)
        acc = 0
        for k, row in enumerate(rec):
            word = 0
            for (_, w, _, b), v in zip(r["fields"], row):
                word |= (int(v) & ((1 << w) - 1)) << b
            acc |= word << (k * r["bits"])
        n = -(-len(rec) * r["bits"] // 8)
        out[r["offset"]:r["offset"] + n] = acc.to_bytes(max(n, 1), "little")[:n]
    for st in p.stores.values():
        if st.kind == "bits":
            out[st.offset:st.offset + st.nbytes] = pack_bits(a[st.name], st.width)
    return bytes(out) + bytes(WINDOW_PAD)


def _field(expr: str, width: int, signed: bool) -> str:
    return f"SX({expr}, {width})" if signed else f"UX({expr}, {width})"


def _accessors(a: dict, p: Plan) -> str:
    """``AT_<name>(i, ...)``: one macro per table reading element [i, ...] as int32_t, wherever it lives."""
    out = []
    for k in TABLES:
        st = p.stores.get(k)
        if st is None:
            continue
        shape = a[k].shape
        args = [f"i{d}" for d in range(len(shape))]
        flat = f"({args[0]})"
        for d in range(1, len(shape)):
            flat = f"({flat} * {shape[d]} + ({args[d]}))"
        sig = ", ".join(args)
        if st.kind == "fold":
            body = f"((int32_t){_lit(st.value)})"
        elif st.kind == "native":
            cast = "(int64_t)" if st.ctype in ("uint32_t", "int64_t") else "(int32_t)"
            body = f"({cast}{k}" + "".join(f"[{x}]" for x in args) + ")"
        else:
            body = _field(f"WINDOW({st.offset}u, (uint32_t){flat} * {st.width}u)", st.width, st.signed)
        out.append(f"#define AT_{k}({sig}) {body}")
    return "\n".join(out)


def _rq(w: SiteWidth, acc: str, d: str, s: str) -> str:
    """C expression: floor((acc + d) / 2^s) as int32_t, for site ``w``'s accumulator type. Where the
    result may pass 2^30 it is clamped to +-2^30: every code range lies well inside, so the site's
    saturation (and its counter) is unchanged and adding a zero point cannot overflow."""
    if w.post64:
        return f"clamp30(rq64x({acc}, {d}, {s}))"
    if not w.acc64:
        return f"rq32({acc}, {d}, {s})"
    return f"rq64w({acc}, {d}, {s})" if w.wide_shift else f"rq64({acc}, {d}, {s})"


def _acc_t(w: SiteWidth) -> str:
    return "int64_t" if w.acc64 else "int32_t"


def _term_t(w: SiteWidth) -> str:
    return "int64_t" if w.term64 else "int32_t"


def _half(w: SiteWidth, s: str) -> str:
    """The half-up rounding offset 2^(s-1) (0 for s = 0) in the site's accumulator type."""
    return f"(({_acc_t(w)})1 << ({s}) >> 1)"


def _mac(w: SiteWidth, terms) -> str:
    """sum of term_t * M_t in the accumulator type: 32 x 32 -> 64-bit products where it is int64."""
    acc = _acc_t(w)
    parts = []
    for sign, t, m in terms:
        parts.append(f"{sign} ({acc})({t}) * {m}")
    text = " ".join(parts).strip()
    return text[2:] if text.startswith("+ ") else text


def _input_note(iq: dict | None, NS: str) -> str:
    """The header's description of the inputs: raw uint8 codes, or the input quantizer of float data."""
    if iq is None:
        return f" * Inputs: raw uint8 values (real value p / 255), {NS}_D_IN per step.\n"
    rows = "\n".join(f" *   channel {j}: lo {lo:.17g}, scale {sc:.17g}  (float64)" for j, (lo, sc) in enumerate(zip(iq["lo"], iq["scale"])))
    return (f" * Inputs: float features quantized per channel j to the codes the step takes ({NS}_D_IN per step)\n"
            f" * (intssm.datapath.inputq):\n"
            f" *   p_j = clamp(round_half_up((u_j - lo_j) / scale_j), 0, {2 ** int(iq['bits']) - 1})   ({iq['bits']}-bit codes)\n"
            f"{rows}\n")


def _input_api(ns: str, iq: dict | None, adc_scale=None) -> str:
    """The header's declaration of the input path of a float-data model (none for raw uint8 inputs)."""
    NS = ns.upper()
    if iq is None:
        return f"#define {NS}_FLOAT_INPUT 0  /* the step takes raw uint8 values */\n"
    out = (f"#define {NS}_FLOAT_INPUT 1  /* float32 readings -> input codes: {ns}_input_codes */\n"
           f"/* The input codes p ({NS}_D_IN) of one step's float32 readings u: exactly the host's input quantizer\n"
           f" * (above), with integer comparisons only (docs/datapath.md, \"Float inputs on a device\"). */\n"
           f"void {ns}_input_codes(const float *u, uint8_t *p);\n")
    if adc_scale is not None:
        out += (f"/* The same from int16 ADC codes a, read as the float32 products a * s_j, s = "
                f"({', '.join(f'{float(v):.9g}' for v in adc_scale)}). */\n"
                f"#define {NS}_ADC_INPUT 1\n"
                f"void {ns}_input_codes_adc(const int16_t *a, uint8_t *p);\n")
    return out


#: A ``--prefix``: a lower-case C identifier that leaves room for the longest name derived from it.
PREFIX_RE = r"[a-z][a-z0-9_]{0,23}"


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is a valid name space for the export (:data:`PREFIX_RE`, not ending in ``_``)."""
    import re

    if not isinstance(prefix, str) or not re.fullmatch(PREFIX_RE, prefix) or prefix.endswith("_"):
        raise IntssmError(f"--prefix must be a lower-case C identifier of at most 24 characters "
                          f"(letters, digits, '_'; a letter first, no '_' last), got {prefix!r}")
    return prefix


def file_names(prefix: str = "intssm") -> tuple[str, str]:
    """(header, source) file names of an export with ``prefix``."""
    return f"{prefix}_model.h", f"{prefix}_model.c"


def _header(ns: str, dims: dict, counters: list, widths: dict, p: Plan, dither: bool, iq: dict | None = None,
            adc_scale=None) -> str:
    NS = ns.upper()
    d = dims
    names = "\n".join(f" *   [{i}] {str(n).replace('*/', '* /')}" for i, n in enumerate(counters))
    sites = "\n".join(f" *   {w.describe()}" for w in widths.values())
    x = p.x
    phase = "    uint32_t phase;  /* k * 0x9E3779B9 mod 2^32 at step k: the step phase of the dithered state rounding */\n" if dither else ""
    return f"""/* {file_names(ns)[0]} -- generated by intssm (C export). Do not edit.
 *
 * Integer-only S4D classifier, bit-exact with intssm's simulator (docs/datapath.md). C99, no libc:
 * every function works on the caller's {ns}_state (no heap, no globals, small stack frames).
 *
 *   static {ns}_state s;            (or any memory of {NS}_STATE_BYTES bytes aligned to {NS}_STATE_ALIGN)
 *   {ns}_reset(&s);
 *   for each time step: {ns}_step(&s, p);          p: {NS}_D_IN input codes
 *   any time after a step: cls = {ns}_logits(&s, logits, counters);   counters may be NULL
 *
 * Streaming: {ns}_logits may be called after any number t >= 1 of steps (up to {NS}_MAX_STEPS) and
 * gives the simulator's logits for those t steps: with mean pooling the sum of the t outputs is
 * scaled to the {NS}_SEQ_LEN steps the pooling multiplier was made for (docs/datapath.md,
 * "Streaming readout"), with last-step pooling it reads step t's output.
{_input_note(iq, NS)} *
 * Arithmetic per requantization site (from the datapath's bound proofs; 32-bit wherever they fit):
{sites}
 *
 * State: each complex mode's (x_re, x_im) codes packed in one {x['bits']}-bit record ({x['wr']} + {x['wi']} bits),
 * mode k at bit k * {x['bits']} of x[], little-endian; {ns}_state_x reads one.
 *
 * Saturation counters ({NS}_N_COUNTERS), in order; each is exact (no wrap) for up to
 * {NS}_COUNTERS_EXACT_STEPS steps since the last reset:
{names}
 */
#ifndef {NS}_MODEL_H
#define {NS}_MODEL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#define {NS}_H {d['H']}            /* channels of the residual stream (d_model) */
#define {NS}_N2 {d['N2']}           /* complex modes per channel (d_state / 2) */
#define {NS}_LAYERS {d['LAYERS']}
#define {NS}_D_IN {d['D_IN']}         /* uint8 input codes per time step */
#define {NS}_D_OUT {d['D_OUT']}        /* classes (logits) */
#define {NS}_N_COUNTERS {d['N_COUNTERS']}
#define {NS}_MEAN_POOL {d['MEAN_POOL']}     /* 1: mean over time, 0: last step */
#define {NS}_SEQ_LEN {d['SEQ_LEN']}u     /* length the model was quantized for (the mean pooling's multiplier) */
#define {NS}_MAX_STEPS {d['MAX_STEPS']}u  /* steps after a reset that {ns}_logits reads (the proved range) */
#define {NS}_X_BITS {x['bits']}     /* bits per mode of packed state */
#define {NS}_COUNTERS_EXACT_STEPS {d['EXACT_STEPS']}u
#define {NS}_STATE_BYTES {d['STATE_BYTES']}  /* sizeof({ns}_state) where int32_t aligns to 4, int64_t to 8 (checked by {file_names(ns)[1]}) */
#define {NS}_STATE_ALIGN {d['STATE_ALIGN']}

typedef struct {{
    uint32_t steps;  /* steps since the last reset, saturating at 2^32 - 1 */
{phase}    uint8_t x[{d['X_BYTES']}];  /* packed state codes (+ {WINDOW_PAD} bytes of window padding) */
    {d['POOL_T']} pool_acc[{NS}_H];  /* sum over time (mean) or last value (last) of the centred output */
    uint32_t counters[{NS}_N_COUNTERS];  /* saturation events so far */
}} {ns}_state;

/* State codes at their zero points (real value 0), step count, accumulators and counters at 0. */
void {ns}_reset({ns}_state *s);
/* One time step: p points to {NS}_D_IN input codes. */
void {ns}_step({ns}_state *s, const uint8_t *p);
/* The readout after the steps so far: writes {NS}_D_OUT logit codes to logits_out and, if counters
 * is not NULL, {NS}_N_COUNTERS saturation counts (the state's, plus this readout's pool and logits
 * clamps). Returns the class (first index of the largest logit), or -1 (nothing written) before
 * the first step or after more than {NS}_MAX_STEPS. The state is not changed: call it any time. */
int {ns}_logits(const {ns}_state *s, int32_t *logits_out, uint32_t *counters);
/* A whole sequence seq (L x {NS}_D_IN codes, step by step) from a reset of s: {ns}_logits's result. */
int {ns}_classify({ns}_state *s, const uint8_t *seq, uint32_t L, int32_t *logits_out);
/* The state codes of mode n of channel hh in layer i. */
void {ns}_state_x(const {ns}_state *s, int i, int hh, int n, int32_t *x_re, int32_t *x_im);
{_input_api(ns, iq, adc_scale)}
#ifdef __cplusplus
}}
#endif

#endif /* {NS}_MODEL_H */
"""


_HELPERS = r"""
/* 1 where the compiler offers the Armv7E-M DSP extension's dual 16-bit multiplies (Cortex-M4, M7,
 * M33): the shared-scale state update with the state as 16-bit halves uses them (ACLE intrinsics). */
#if (defined(__ARM_FEATURE_SIMD32) || defined(__ARM_FEATURE_SAT)) && !defined(INTSSM_NO_DSP)
#include <arm_acle.h>
#endif
#if defined(__ARM_FEATURE_SIMD32) && !defined(INTSSM_NO_DSP)
#define INTSSM_DSP 1
#else
#define INTSSM_DSP 0
#endif
/* SATB(v, b, cnt): sat() for the full b-bit signed range, with SSAT where the core has it. */
#if defined(__ARM_FEATURE_SAT) && !defined(INTSSM_NO_DSP)
#if defined(__GNUC__) && !defined(__clang__)
/* GCC's __builtin_arm_ssat (behind ACLE's __ssat) is declared to return unsigned int; its value is
 * the signed b-bit result, which -Wsign-conversion is told here, and only here */
#define SSAT_(v, b) (__extension__({ _Pragma("GCC diagnostic push") \
    _Pragma("GCC diagnostic ignored \"-Wsign-conversion\"") const int32_t r_ = __ssat((v), (b)); \
    _Pragma("GCC diagnostic pop") r_; }))
#else
#define SSAT_(v, b) __ssat((v), (b))
#endif
#define SATB(v, b, cnt) ssat_count_((v), SSAT_((v), (b)), (cnt))
#else
#define SATB(v, b, cnt) sat((v), -(INT32_C(1) << ((b) - 1)), (INT32_C(1) << ((b) - 1)) - 1, (cnt))
#endif

/* Two's-complement bits to value: (int32_t)r for r < 2^31, else r - 2^32 (no implementation-defined
 * conversion; compilers emit no instruction for it). */
static inline int32_t as_i32(uint32_t r)
{
    return r < UINT32_C(0x80000000) ? (int32_t)r : -(int32_t)(~r) - 1;
}

/* Fields of packed tables and state. WINDOW(off, bit): the 32 bits of model_bits from byte
 * off + bit / 8, little-endian, shifted right by bit % 8 -- holds any field of <= 25 bits that
 * starts at that bit. SX / UX: the low w bits as a two's-complement / unsigned value. */
static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
#define WINDOW(off, bit) (rd32(model_bits + (off) + ((bit) >> 3)) >> ((bit) & 7u))
#define UX(v, w) ((int32_t)((v) & ((UINT32_C(1) << (w)) - 1u)))
#if (defined(__GNUC__) || defined(__clang__)) && !defined(INTSSM_PORTABLE_SHIFTS)
#define SX(v, w) ((int32_t)((uint32_t)(v) << (32 - (w))) >> (32 - (w)))  /* SBFX / ASR */
#else
#define SX(v, w) (as_i32((((v) & ((UINT32_C(1) << (w)) - 1u)) ^ (UINT32_C(1) << ((w) - 1))) - (UINT32_C(1) << ((w) - 1))))
#endif

/* Rounding shifts: floor((v + d) / 2^s), which is round half up for d = 2^(s-1) (exactly
 * intssm.datapath.fixedpoint.rounding_rshift) and the state's rounding for any d in [0, 2^s)
 * (offset_rshift). v + d and the result are proved to fit the types used (per site, header).
 * GCC and Clang define >> of a negative signed value as an arithmetic shift, which is the floor;
 * C99 leaves it implementation-defined (6.5.7p5), so other compilers (or -DINTSSM_PORTABLE_SHIFTS)
 * shift unsigned bit patterns instead, with the same results:
 *  rq32:  32-bit v, s in [0, 31]: floor(v / 2^s) = ((v + 2^31) >> s) - 2^(31-s), mod 2^32;
 *  rq64:  64-bit v, s in [0, 31]: the low 32 bits of floor(v / 2^s) are bits s..s+31 of v, the same
 *         for logical and arithmetic shifts, and the result fits int32;
 *  rq64w: 64-bit v, s in [0, 62]: as rq32, with 2^63. */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(INTSSM_PORTABLE_SHIFTS)
#define RQH32(v, s1) ((((int32_t)(v) >> (s1)) + 1) >> 1)
#define RQH64(v, s1) ((int32_t)((((int64_t)(v) >> (s1)) + 1) >> 1))
#define rq64x(v, d, s) ((((int64_t)(v) + (int64_t)(d)) >> (s)))
#define rq32(v, d, s) ((int32_t)(((int32_t)(v) + (int32_t)(d)) >> (s)))
#define rq64(v, d, s) ((int32_t)(((int64_t)(v) + (int64_t)(d)) >> (s)))
#define rq64w(v, d, s) ((int32_t)(((int64_t)(v) + (int64_t)(d)) >> (s)))
#else
static inline int32_t rq32(int32_t v, int32_t d, int s)
{
    const uint32_t u = ((uint32_t)v + (uint32_t)d) ^ UINT32_C(0x80000000);
    return as_i32((u >> s) - (UINT32_C(0x80000000) >> s));
}
static inline int32_t rq64(int64_t v, int64_t d, int s)
{
    return as_i32((uint32_t)(((uint64_t)v + (uint64_t)d) >> s));
}
static inline int32_t rq64w(int64_t v, int64_t d, int s)
{
    const uint64_t u = ((uint64_t)v + (uint64_t)d) ^ (UINT64_C(1) << 63);
    return as_i32((uint32_t)((u >> s) - ((UINT64_C(1) << 63) >> s)));
}
#define RQH32(v, s1) rq32((v), (int32_t)1 << (s1), (s1) + 1)
#define RQH64(v, s1) rq64((v), (int64_t)1 << (s1), (s1) + 1)
static inline int64_t rq64x(int64_t v, int64_t d, int s)  /* the whole 64-bit floor; |v + d| < 2^53 */
{
    v += d;
    return v >= 0 ? (v >> s) : -((-v - 1) >> s) - 1;
}
#endif
static inline int32_t clamp30(int64_t v)
{
    return v < -(INT64_C(1) << 30) ? -(INT32_C(1) << 30) : v > (INT64_C(1) << 30) ? (INT32_C(1) << 30) : (int32_t)v;
}

/* Clamp to [lo, hi]; every clamp increments *cnt. */
static inline int32_t sat(int32_t v, int32_t lo, int32_t hi, uint32_t *cnt)
{
    if (v < lo) {
        ++*cnt;
        return lo;
    }
    if (v > hi) {
        ++*cnt;
        return hi;
    }
    return v;
}
/* ssat_count_: the count beside SSAT's clamp; the increment is the rare path (out of line). */
#if defined(__GNUC__) || defined(__clang__)
#define INTSSM_RARE(c) __builtin_expect(!!(c), 0)
#else
#define INTSSM_RARE(c) (c)
#endif
static inline int32_t ssat_count_(int32_t v, int32_t clamped, uint32_t *cnt)
{
    if (INTSSM_RARE(clamped != v))
        ++*cnt;
    return clamped;
}

/* The dither offset of lane j at step phase ph, for shifts s in [0, 32]:
 * ((ph + j * 0x6A09E667) mod 2^32) >> (32 - s), exactly intssm.datapath.fixedpoint.weyl_offset (uint32_t
 * arithmetic wraps mod 2^32; s = 0 is kept apart because a 32-bit shift of a uint32_t is undefined). */
#if INTSSM_DITHER
static inline uint32_t weyl_offset(uint32_t ph, uint32_t j, int s)
{
    const uint32_t w = ph + j * UINT32_C(0x6A09E667);
    return s == 0 ? 0 : w >> (32 - s);
}
#endif
"""


def _half_trick(w: SiteWidth, dither: bool) -> bool:
    """Whether the state loop rounds half up as floor((floor(acc / 2^(s-1)) + 1) / 2): one register
    (s - 1) instead of two (s and 2^(s-1)) per part; needs every shift >= 1."""
    return not dither and w.min_shift >= 1 and not w.post64 and not w.wide_shift


def shared_update(a: dict) -> bool:
    """Whether every layer's state update has one multiplier for both Abar terms of both parts, one
    for both B terms, and one shift (a model quantized with ``complex_scale`` "shared"): the C
    then forms the complex product first and requantizes once per part."""
    Mr, Mi = a["x_re_M"], a["x_im_M"]
    return bool(np.array_equal(Mr[:, 0], Mr[:, 1]) and np.array_equal(Mr[:, 0], Mi[:, 0])
                and np.array_equal(Mr[:, 0], Mi[:, 1]) and np.array_equal(Mr[:, 2], Mi[:, 2])
                and np.array_equal(a["x_re_S"], a["x_im_S"]))


def _body(ns: str, p: Plan, w: dict, dims: dict, dither: bool, shared: bool = False) -> str:
    """The API's functions (reset, step, readout), with the counter indices of :mod:`intssm.datapath.layout`."""
    NS = ns.upper()
    nlc = len(layout.LAYER_COUNTERS)
    x = p.x
    xr_rd, xi_rd = _field("xw", x["wr"], x["sr"]), _field(f"(xw >> {x['wr']})", x["wi"], x["si"])
    XB = x["bits"]
    rmask = hex((1 << XB) - 1) if XB < 32 else "0xffffffff"
    pack = (f"((uint32_t)nr & {hex((1 << x['wr']) - 1)}u) | ((uint32_t)ni & {hex((1 << x['wi']) - 1)}u) << {x['wr']}")

    def x_store(addr: str, sh: str, ind: str, old: str | None = None) -> str:
        """Write record ``xw`` at bit ``sh`` of the 32-bit window at ``addr``, keeping the window's
        other bits (``old``: that window as read before, when nothing wrote it since)."""
        keep = f"~((uint32_t){rmask}u << {sh})" if XB < 32 else "0u"
        return (f"{ind}{{\n{ind}    uint8_t *const xq_ = {addr};\n"
                f"{ind}    const uint32_t ow_ = ({old or 'rd32(xq_)'} & {keep}) | (xw << {sh});\n"
                + "".join(f"{ind}    xq_[{b}] = (uint8_t)(ow_ >> {8 * b});\n" for b in range(4)) + f"{ind}}}")

    we, wxr, wxi, wy, wg, wh, wp, wl = (w[k] for k in ("enc", "x_re", "x_im", "y", "glu", "h", "pool", "logits"))
    tx = _term_t(wxr) if not wxi.term64 else "int64_t"
    acc_r = _mac(wxr, [("+", "ar * xr", "mr0"), ("-", "ai * xi", "mr1"), ("+", "br * u", "mr2")])
    acc_i = _mac(wxi, [("+", "ar * xi", "mi0"), ("+", "ai * xr", "mi1"), ("+", "bi * u", "mi2")])
    # int32 accumulators: |u M2| <= |B| |u| M2 <= the proved bound, so u M2 is formed once per channel
    if not wxr.acc64 and not wxr.term64:
        acc_r = acc_r.replace("(int32_t)(br * u) * mr2", "br * umr")
    if not wxi.acc64 and not wxi.term64:
        acc_i = acc_i.replace("(int32_t)(bi * u) * mi2", "bi * umi")
    if tx == "int64_t":
        acc_r = acc_r.replace("ar * xr", "(int64_t)ar * xr").replace("ai * xi", "(int64_t)ai * xi").replace("br * u", "(int64_t)br * u")
        acc_i = acc_i.replace("ar * xi", "(int64_t)ar * xi").replace("ai * xr", "(int64_t)ai * xr").replace("bi * u", "(int64_t)bi * u")
    cplx = ""
    if shared:  # one arithmetic for both parts: the wider of the two sites' (they share multipliers and shifts)
        wxr = wxi = SiteWidth("x", max(wxr.term_bound, wxi.term_bound), max(wxr.acc_bound, wxi.acc_bound),
                              max(wxr.max_shift, wxi.max_shift), min(wxr.min_shift, wxi.min_shift),
                              wxr.term64 or wxi.term64, wxr.acc64 or wxi.acc64, wxr.post64 or wxi.post64)
        # x' = M (A x) + M_B B u: the complex product first (|Re|, |Im| <= the sum of two Abar terms'
        # bounds), then one multiplier; the x_im tables equal the x_re ones (shared_update)
        ct = "int64_t" if wxr.term64 or 2 * wxr.term_bound > INT32_LIMIT else "int32_t"
        cplx = f"const {ct} pr = ({ct})ar * xr - ({ct})ai * xi, pi = ({ct})ar * xi + ({ct})ai * xr;"
        zero = lambda k: p.stores[k].kind == "fold" and p.stores[k].value == 0  # noqa: E731
        if ct == "int32_t" and x["bits"] == 32 and x["wr"] == x["wi"] == 16 and all(
                zero(k) for k in ("x_re_z", "x_im_z", "A_re_z", "A_im_z")):
            # the state word is (x_re, x_im) as 16-bit halves: with the DSP extension, two dual
            # 16-bit multiplies form the complex product (SMUSD: lo*lo - hi*hi, SMUADX: lo*hi + hi*lo)
            a2 = "((uint32_t)ar & 0xffffu) | ((uint32_t)ai << 16)"
            f = {k: (fw, b) for k, fw, _, b in (p.record["fields"] if p.record else [])}
            if f.get("A_re") == (8, 0) and f.get("A_im") == (8, 8):
                # byte 1 of the record moved to byte 2, then SXTB16 sign-extends bytes 0 and 2
                a2 = "(uint32_t)__sxtb16((int32_t)((rec & 0xffffu) | (rec << 8)))"
            cplx = ("#if INTSSM_DSP\n"
                    f"const uint32_t a2 = {a2};  /* (Are, Aim) as 16-bit halves */\n"
                    "const int32_t pr = __smusd((int16x2_t)as_i32(a2), (int16x2_t)as_i32(xw)), "
                    "pi = __smuadx((int16x2_t)as_i32(a2), (int16x2_t)as_i32(xw));\n"
                    "(void)xr, (void)xi, (void)ar, (void)ai;\n"
                    "#else\n" + cplx + "\n#endif")
        acc_r = _mac(wxr, [("+", "pr", "mr0"), ("+", "br * u", "mr2")])
        acc_i = _mac(wxi, [("+", "pi", "mr0"), ("+", "bi * u", "mr2")])
        if not wxr.acc64 and not wxi.acc64 and ct == "int32_t":
            acc_r = acc_r.replace("(int32_t)(br * u) * mr2", "br * umr")
            acc_i = acc_i.replace("(int32_t)(bi * u) * mr2", "bi * umr")
        elif ct == "int64_t":
            acc_r, acc_i = acc_r.replace("br * u", "(int64_t)br * u"), acc_i.replace("bi * u", "(int64_t)bi * u")
    ty_t = _term_t(wy)
    h_t, a_t, g_t = (ctype_for(*dims[k])[0] for k in ("QR_H", "QR_ACT", "QR_GLU"))
    half_r, half_i = _half_trick(wxr, dither), _half_trick(wxi, dither)
    var = {"A_re": ("ar", "azr"), "A_im": ("ai", "azi"), "B_re": ("br", "bz"), "B_im": ("bi", "bz"), "C_re": ("cr", "cz"),
           "C_im": ("ci", "cz")}

    def rounding(ws: SiteWidth, acc: str, part: str, half: bool) -> str:
        sp = "r" if shared else part  # shared: one shift for both parts (the dither offsets stay per part)
        if half:  # floor((acc + 2^(s-1)) / 2^s) = floor((floor(acc / 2^(s-1)) + 1) / 2), s >= 1
            return f"RQH{'64' if ws.acc64 else '32'}({acc}, s{sp}1)"
        return _rq(ws, acc, f"d{sp}" if not dither else f"d{part}", f"s{sp}")

    def satx(row: str, qr: tuple, v: str, c: int) -> str:
        """The state's clamp and count; SSAT where the code range is a full signed width."""
        b = qr[1].bit_length() + 1
        if qr == (-(1 << (b - 1)), (1 << (b - 1)) - 1):
            return f"SATB({v}, {b}, &cnt[base + {c}])"
        return f"sat({v}, QMIN_{row}, QMAX_{row}, &cnt[base + {c}])"

    def mode(rec: str | None, n: str, ind: str, xaddr: str, xsh: str, xpre: str | None = None) -> str:
        """One mode's update; ``rec`` the expression of its packed record (None: tables), ``n`` its
        index; its state record at bit ``xsh`` of the window at ``xaddr`` (``xpre``: that window,
        read before the group's writes, for byte-aligned records)."""
        out = []
        if rec is not None:
            out.append(f"const uint32_t rec = {rec};")
            for f, fw, sg, b in p.record["fields"]:
                v, z = var[f]
                out.append(f"const int32_t {v} = {_field(f'(rec >> {b})' if b else 'rec', fw, sg)} - {z};")
        else:
            for f in MODE_RECORD:
                v, z = var[f]
                out.append(f"const int32_t {v} = AT_{f}(i, hh, {n}) - {z};")
        xread = xpre if xpre is not None else f"rd32({xaddr})" + (f" >> {xsh}" if xsh != "0" else "")
        out += [f"uint32_t xw = {xread};",
                f"const int32_t xr = {xr_rd} - zr;",
                f"const int32_t xi = {xi_rd} - zi;",
                "int32_t nr, ni;",
                "/* x_re' = Are x_re - Aim x_im + Bre u ;  x_im' = Are x_im + Aim x_re + Bim u */",
                *(cplx.split("\n") if cplx else []),
                f"const {_acc_t(wxr)} acc_r = {acc_r};",
                f"const {_acc_t(wxi)} acc_i = {acc_i};"]
        if dither:  # lanes j = ((2 i + part) H + hh) N2 + n
            out += [f"const {_acc_t(wxr)} dr = ({_acc_t(wxr)})weyl_offset(s->phase, (uint32_t)(((2 * i) * {NS}_H + hh) * {NS}_N2 + {n}), sr);",
                    f"const {_acc_t(wxi)} di = ({_acc_t(wxi)})weyl_offset(s->phase, (uint32_t)(((2 * i + 1) * {NS}_H + hh) * {NS}_N2 + {n}), si);"]
        out += [f"nr = {satx('XRE', dims['QR_X_RE'], rounding(wxr, 'acc_r', 'r', half_r) + ' + zr', layout.C_XRE)};",
                f"ni = {satx('XIM', dims['QR_X_IM'], rounding(wxi, 'acc_i', 'i', half_i) + ' + zi', layout.C_XIM)};",
                f"xw = {pack};"]
        out = [ind + ln for ln in out] + [x_store(xaddr, xsh, ind, xpre)]
        out += [f"{ind}ty1 += ({ty_t})(nr - zr) * cr;", f"{ind}ty2 += ({ty_t})(ni - zi) * ci;"]
        return "\n".join(out)

    mix_dot = (f"            for (hh = 0; hh < {NS}_H; ++hh)\n"
               f"                t += ({_term_t(wg)})(AT_mix_w(i, j, hh) - wz) * (a[hh] - az);")
    mw = p.stores["mix_w"]
    if mw.kind == "bits" and dims["H"] * mw.width % 8 == 0 and dims["H"] <= 64:
        # rows start on a byte: the row unrolled, each field at a constant byte and bit
        fw = mw.width
        lines = [f"            const uint8_t *wp = model_bits + {mw.offset} + (i * 2 * {NS}_H + j) * {dims['H'] * fw // 8};"]
        for q in range(dims["H"]):
            win = f"rd32(wp + {q * fw // 8})" + (f" >> {q * fw % 8}" if q * fw % 8 else "")
            lines.append(f"            t += ({_term_t(wg)})({_field(win, fw, mw.signed)} - wz) * (a[{q}] - az);")
        mix_dot = "\n".join(lines)
    ind = " " * 16
    pre = []
    if not dither:
        pre += [f"const {_acc_t(wxr)} dr = {_half(wxr, 'sr')};" if not half_r else "const int sr1 = sr - 1;"]
        if not shared:
            pre += [f"const {_acc_t(wxi)} di = {_half(wxi, 'si')};" if not half_i else "const int si1 = si - 1;"]
    pre = "\n".join(" " * 12 + ln for ln in pre)
    r = p.record
    G = math.lcm(r["group"] if r is not None else 1, x["group"])
    if dims["N2"] % G == 0:  # whole groups of modes start on a byte: constant offsets inside a group
        R = r["bits"] if r is not None else 0
        pre_read = XB % 8 == 0  # whole-byte records: the group's windows are read before its writes
        reads = "\n".join(f"{ind}const uint32_t xw{q} = rd32(xp + {q * XB // 8});" for q in range(G)) if pre_read else ""
        body = "\n".join(
            ind + "{\n" + mode(None if r is None else (f"rd32(rp + {q * R // 8}) >> {q * R % 8}" if q * R % 8 else f"rd32(rp + {q * R // 8})"),
                               f"n + {q}", ind + "    ", f"xp + {q * XB // 8}", str(q * XB % 8),
                               f"xw{q}" if pre_read else None) + "\n" + ind + "}" for q in range(G))
        rp = "" if r is None else f"\n            const uint8_t *rp = model_bits + {r['offset']} + k0 / {G} * {G * R // 8};"
        loop = (f"{pre}{rp}\n            uint8_t *xp = s->x + k0 / {G} * {G * XB // 8};\n"
                f"            for (n = 0; n < {NS}_N2; n += {G}{', rp += ' + str(G * R // 8) if r is not None else ''}, xp += {G * XB // 8}) {{\n"
                + (reads + "\n" if reads else "") + f"{body}\n            }}")
    else:
        rec = None if r is None else f"WINDOW({r['offset']}u, (uint32_t)(k0 + n) * {r['bits']}u)"
        loop = (f"{pre}\n            for (n = 0; n < {NS}_N2; ++n) {{\n"
                f"{ind}const uint32_t xb = (uint32_t)(k0 + n) * {XB}u;\n"
                f"{mode(rec, 'n', ind, 's->x + (xb >> 3)', '(xb & 7u)')}\n            }}")
    return f"""
void {ns}_reset({ns}_state *s)
{{
    /* the plain loops are written through volatile pointers: GCC turns a zeroing loop into a call
     * of memset (-ftree-loop-distribute-patterns), which a freestanding image need not have */
    volatile uint8_t *const xz = s->x;
    volatile {dims['POOL_T']} *const pz = s->pool_acc;
    volatile uint32_t *const cz = s->counters;
    uint32_t k;
    int i, hh, n;
    for (k = 0; k < (uint32_t)sizeof s->x; ++k)
        xz[k] = 0;
    for (i = 0; i < {NS}_LAYERS; ++i)
        for (hh = 0; hh < {NS}_H; ++hh) {{
            const int32_t nr = AT_x_re_z(i, hh), ni = AT_x_im_z(i, hh);
            const uint32_t xw = {pack};
            for (n = 0; n < {NS}_N2; ++n) {{
                const uint32_t xb = (uint32_t)((i * {NS}_H + hh) * {NS}_N2 + n) * {XB}u;
{x_store("s->x + (xb >> 3)", "(xb & 7u)", "                ")}
            }}
        }}
    for (k = 0; k < {NS}_H; ++k)
        pz[k] = 0;
    for (k = 0; k < {NS}_N_COUNTERS; ++k)
        cz[k] = 0;
    s->steps = 0;
#if INTSSM_DITHER
    s->phase = 0;
#endif
}}

void {ns}_state_x(const {ns}_state *s, int i, int hh, int n, int32_t *x_re, int32_t *x_im)
{{
    const uint32_t xb = (uint32_t)((i * {NS}_H + hh) * {NS}_N2 + n) * {XB}u;
    const uint32_t xw = rd32(s->x + (xb >> 3)) >> (xb & 7u);
    *x_re = {xr_rd};
    *x_im = {xi_rd};
}}

void {ns}_step({ns}_state *s, const uint8_t *p)
{{
    {h_t} h[{NS}_H];
    {a_t} a[{NS}_H];
    {g_t} g[2 * {NS}_H];
    uint32_t *cnt = s->counters;
    int i, hh, n, j;

    /* encoder: h0 = requant(enc_b + sum_j (enc_w - z) p_j) */
    for (hh = 0; hh < {NS}_H; ++hh) {{
        const int se = AT_enc_S(hh);
        {_term_t(we)} t = AT_enc_b(hh);
        for (j = 0; j < {NS}_D_IN; ++j)
            t += ({_term_t(we)})(AT_enc_w(hh, j) - AT_enc_w_z(hh)) * (int32_t)p[j];
        h[hh] = ({h_t})sat({_rq(we, _mac(we, [('+', 't', 'AT_enc_M(hh)')]), _half(we, 'se'), 'se')} + AT_h_z(0), QMIN_H, QMAX_H, &cnt[0]);
    }}
    for (i = 0; i < {NS}_LAYERS; ++i) {{
        const int base = {layout.layer_base(0)} + {nlc} * i;
        for (hh = 0; hh < {NS}_H; ++hh) {{
            const int32_t u = h[hh] - AT_h_z(i);
            const int32_t zr = AT_x_re_z(i, hh), zi = AT_x_im_z(i, hh);
            const int32_t azr = AT_A_re_z(i, hh), azi = AT_A_im_z(i, hh), bz = AT_B_z(i, hh), cz = AT_C_z(i, hh);
            const int32_t mr0 = AT_x_re_M(i, 0, hh), mr1 = AT_x_re_M(i, 1, hh), mr2 = AT_x_re_M(i, 2, hh);
            const int32_t mi0 = AT_x_im_M(i, 0, hh), mi1 = AT_x_im_M(i, 1, hh), mi2 = AT_x_im_M(i, 2, hh);
            const int32_t umr = u * mr2, umi = u * mi2;
            (void)mr0, (void)mr1, (void)mi0, (void)mi1, (void)umr, (void)umi;
            const int sr = AT_x_re_S(i, hh), si = AT_x_im_S(i, hh);
            (void)si;
            const int k0 = (i * {NS}_H + hh) * {NS}_N2;
            {ty_t} ty1 = 0, ty2 = 0;
            int32_t y;
{loop}
            {{  /* y = 2 Re(C x) + D u (the 2 is folded into the multipliers) */
                const int sy = AT_y_S(i, hh);
                const {_acc_t(wy)} acc_y = {_mac(wy, [('+', 'ty1', 'AT_y_M(i, 0, hh)'), ('-', 'ty2', 'AT_y_M(i, 1, hh)'), ('+', '(AT_D(i, hh) - AT_D_z(i, hh)) * u', 'AT_y_M(i, 2, hh)')])};
                y = sat({_rq(wy, 'acc_y', _half(wy, 'sy'), 'sy')} + AT_y_z(i), QMIN_Y, QMAX_Y, &cnt[base + {layout.C_Y}]);
            }}
            a[hh] = ({a_t})AT_gelu_lut(i, y - QMIN_Y);
        }}
        /* GLU mixing: g = requant(mix_b + (mix_w - z) (a - z_act)) */
        for (j = 0; j < 2 * {NS}_H; ++j) {{
            const int sg = AT_glu_S(i, j);
            const int32_t wz = AT_mix_w_z(i, j), az = AT_act_z(i);
            {_term_t(wg)} t = AT_mix_b(i, j);
{mix_dot}
            g[j] = ({g_t})sat({_rq(wg, _mac(wg, [('+', 't', 'AT_glu_M(i, j)')]), _half(wg, 'sg'), 'sg')} + AT_glu_z(i), QMIN_GLU, QMAX_GLU, &cnt[base + {layout.C_GLU}]);
        }}
        /* residual: h <- requant(h + g_a * sigmoid(g_b)) */
        for (hh = 0; hh < {NS}_H; ++hh) {{
            const int sh = AT_h_S(i, hh);
            const int32_t sgm = AT_sig_lut(i, g[{NS}_H + hh] - QMIN_GLU);
            const {_acc_t(wh)} acc = {_mac(wh, [('+', 'h[hh] - AT_h_z(i)', 'AT_h_M(i, 0, hh)'), ('+', '(g[hh] - AT_glu_z(i)) * sgm', 'AT_h_M(i, 1, hh)')])};
            h[hh] = ({h_t})sat({_rq(wh, 'acc', _half(wh, 'sh'), 'sh')} + AT_h_z(i + 1), QMIN_H, QMAX_H, &cnt[base + {layout.C_H}]);
        }}
    }}
#if {NS}_MEAN_POOL
    if (s->steps < {NS}_MAX_STEPS)  /* past it the readout refuses: the sum stops, so it never overflows */
        for (hh = 0; hh < {NS}_H; ++hh)
            s->pool_acc[hh] += h[hh] - AT_h_z({NS}_LAYERS);
#else
    for (hh = 0; hh < {NS}_H; ++hh)
        s->pool_acc[hh] = h[hh] - AT_h_z({NS}_LAYERS);
#endif
    if (s->steps != UINT32_MAX)
        ++s->steps;
#if INTSSM_DITHER
    s->phase += UINT32_C(0x9E3779B9);  /* the next step's phase, mod 2^32 */
#endif
}}
#if {NS}_MEAN_POOL

/* The streaming readout's pooling sum after t steps: round_half_up(acc L / t), L = {NS}_SEQ_LEN,
 * as floor((2 acc L + t) / (2 t)) (docs/datapath.md, "Streaming readout"); |2 acc L + t| < 2^63
 * for t <= {NS}_MAX_STEPS, and |result| <= L max|h'|, the pooling site's proved bound. */
static int64_t mean_rescale(int64_t acc, uint32_t t)
{{
    const int64_t num = 2 * acc * (int64_t){NS}_SEQ_LEN + (int64_t)t, den = 2 * (int64_t)t;
    return num >= 0 ? num / den : -((-num - 1) / den) - 1;
}}
#endif

int {ns}_logits(const {ns}_state *s, int32_t *logits_out, uint32_t *counters)
{{
    int32_t pooled[{NS}_H];
    uint32_t c_pool = 0, c_logits = 0;
    const uint32_t steps = s->steps;
    const int ci = {layout.head_base(0)} + {nlc} * {NS}_LAYERS;
    int hh, o, best = 0;
    if (steps == 0)
        return -1;
#if {NS}_MEAN_POOL
    if (steps > {NS}_MAX_STEPS)
        return -1;
#endif
    for (hh = 0; hh < {NS}_H; ++hh) {{
        const int sp = AT_pool_S(hh);
        {dims['POOL_T']} v = s->pool_acc[hh];
#if {NS}_MEAN_POOL
        if (steps != {NS}_SEQ_LEN)
            v = ({dims['POOL_T']})mean_rescale(v, steps);
#endif
        pooled[hh] = sat({_rq(wp, _mac(wp, [('+', 'v', 'AT_pool_M(hh)')]), _half(wp, 'sp'), 'sp')} + AT_pool_z(0),
                         QMIN_POOL, QMAX_POOL, &c_pool) - AT_pool_z(0);
    }}
    for (o = 0; o < {NS}_D_OUT; ++o) {{
        const int sl = AT_logits_S(o);
        {_term_t(wl)} t = AT_dec_b(o);
        for (hh = 0; hh < {NS}_H; ++hh)
            t += ({_term_t(wl)})(AT_dec_w(o, hh) - AT_dec_w_z(o)) * pooled[hh];
        logits_out[o] = sat({_rq(wl, _mac(wl, [('+', 't', 'AT_logits_M(o)')]), _half(wl, 'sl'), 'sl')} + AT_logits_z(0),
                            QMIN_LOGITS, QMAX_LOGITS, &c_logits);
        if (logits_out[o] > logits_out[best])
            best = o;
    }}
    if (counters)
        for (o = 0; o < {NS}_N_COUNTERS; ++o)
            counters[o] = s->counters[o] + (o == ci + {layout.C_POOL} ? c_pool : 0u) + (o == ci + {layout.C_LOGITS} ? c_logits : 0u);
    return best;
}}

int {ns}_classify({ns}_state *s, const uint8_t *seq, uint32_t L, int32_t *logits_out)
{{
    uint32_t t;
    {ns}_reset(s);
    for (t = 0; t < L; ++t, seq += {NS}_D_IN)
        {ns}_step(s, seq);
    return {ns}_logits(s, logits_out, 0);
}}
"""


def _source(ns: str, a: dict, p: Plan, w: dict, dims: dict, iq: dict | None = None, adc_scale=None) -> str:
    NS = ns.upper()
    qr = a["qrange"]
    native = [st for st in p.stores.values() if st.kind == "native"]
    packed = [st for st in p.stores.values() if st.kind == "bits"]
    folded = [st.name for st in p.stores.values() if st.kind == "fold"]
    out = [f"""/* {file_names(ns)[1]} -- generated by intssm (C export). Do not edit.
 *
 * Integer-only S4D datapath (docs/datapath.md), bit-exact with intssm.integer.sim (_run_one).
 *
 * Portability (C99, freestanding: <stdint.h> only, no libc function; -ffreestanding -nostdlib
 * links, with libgcc's helpers for 64-bit multiplies and divisions on cores without them):
 *  - no floating point, no malloc, no mutable globals: all state lives in the caller's {ns}_state;
 *  - 32-bit arithmetic wherever the datapath's bound proofs allow it, 64-bit accumulators of
 *    32 x 32-bit products elsewhere (per site: {file_names(ns)[0]}); no signed overflow can occur;
 *  - no right shift of a negative number (implementation-defined in C99): see rq32 below;
 *  - exact-width types are two's complement by definition (C99 7.18.1.1).
 *
 * Constant data: {p.flash_bytes} bytes = {len(native)} tables of whole C integers
 * ({sum(st.nbytes for st in native)} bytes) + {p.blob_bytes} bytes of fields packed at their exact bit
 * widths in model_bits ({len(packed)} tables{', the per-mode record of ' + ', '.join(MODE_RECORD) if p.record else ''})
 * + {WINDOW_PAD} bytes of window padding, plus alignment. Folded to constants (zero points of
 * symmetric formats, all 0): {', '.join(folded) if folded else 'none'}.
 */
#include <stdint.h>

#include "{file_names(ns)[0]}"

/* the header's {NS}_STATE_BYTES and {NS}_STATE_ALIGN hold for this compiler (C99: no _Static_assert) */
typedef char state_bytes_check_[(sizeof({ns}_state) == {NS}_STATE_BYTES) ? 1 : -1];

/* code ranges [qmin, qmax] of every quantized tensor */"""]
    for j, n in enumerate(map(_qr_macro, layout.QRANGE_ROWS)):
        out.append(f"#define QMIN_{n} ({_lit(int(qr[j, 0]))})\n#define QMAX_{n} ({_lit(int(qr[j, 1]))})")
    out.append(f"/* 1: the state update rounds with the Weyl dither (docs/datapath.md, step 2); 0: half up */\n"
               f"#define INTSSM_DITHER {int(a['x_dither'][0])}\n")
    out.append("""/* Keep every table in the object even where the compiler folds all of its reads, so that the
 * flash footprint is exactly the table sizes above (plus padding). */
#if defined(__GNUC__)
#define INTSSM_TABLE __attribute__((used))
#else
#define INTSSM_TABLE
#endif
""")
    for st in native:
        v = a[st.name]
        out.append(f"/* {st.name}: {st.count} x {st.ctype} = {st.nbytes} bytes */\n"
                   f"INTSSM_TABLE static const {st.ctype} {st.name}{''.join(f'[{s}]' for s in v.shape)} = {c_initializer(v)};\n")
    blob = _blob(a, p)
    lines = [f"/* {st.name}: {st.count} x {st.width} bits at byte {st.offset} */" for st in packed]
    if p.record:
        r = p.record
        desc = ", ".join(f"{f} ({w} bits)" for f, w, _, _ in r["fields"])
        lines.insert(0, f"/* one {r['bits']}-bit record per mode at byte {r['offset']}: {desc} */")
    out.append("\n".join(lines))
    out.append(f"INTSSM_TABLE static const uint8_t model_bits[{len(blob)}] = {c_initializer(np.frombuffer(blob, np.uint8))};\n")
    out.append(_accessors(a, p))
    out.append(_HELPERS)
    out.append(_body(ns, p, w, dims, bool(a['x_dither'][0]), shared_update(a)))
    if iq is not None:
        from intssm.datapath.inputq import InputQuant
        from intssm.integer import cinput

        q = InputQuant.from_dict(iq)
        adc = None if adc_scale is None else cinput.adc_thresholds(q, adc_scale)
        out.append(cinput.c_source(ns, cinput.thresholds(q), adc, adc_scale))
    return "\n".join(out)


#: First line of every generated example ``main.c``; a ``main.c`` that starts otherwise is the user's, and kept.
MAIN_MARK = "/* main.c -- example for the generated"


def _main(ns: str, float_inputs: bool = False) -> str:
    NS = ns.upper()
    h, c = file_names(ns)
    what = (f"{NS}_D_IN float32 readings (native byte order) per step, which {ns}_input_codes turns into codes"
            if float_inputs else f"{NS}_D_IN input codes (bytes) per step")
    read = (f"""    float u[{NS}_D_IN];
    uint8_t p[{NS}_D_IN];""" if float_inputs else f"""    uint8_t p[{NS}_D_IN];""")
    buf, feed = ("u", f"""{{
        {ns}_input_codes(u, p);
        {ns}_step(&s, p);
    }}""") if float_inputs else ("p", f"""{ns}_step(&s, p);""")
    return f"""{MAIN_MARK} {ns} model (generated; libc: stdio only here).
 *
 * Reads a sequence of any length from stdin, {what},
 * step by step, runs each step as it arrives and prints the integer logit codes, the class and the step count:
 *   cc -std=c99 -O2 main.c {c} -o {ns}_demo && ./{ns}_demo < sequence.bin
 */
#include <stdio.h>

#include "{h}"

int main(void)
{{
    static {ns}_state s;
{read}
    int32_t logits[{NS}_D_OUT];
    size_t got;
    int o, cls;
    {ns}_reset(&s);
    while ((got = fread({buf}, 1, sizeof {buf}, stdin)) == sizeof {buf})
        {feed}
    if (got != 0) {{
        fprintf(stderr, "error: the input ends inside a step (%lu of %lu bytes)\\n", (unsigned long)got, (unsigned long)sizeof {buf});
        return 2;
    }}
    cls = {ns}_logits(&s, logits, NULL);
    if (cls < 0) {{
        fprintf(stderr, "error: %lu steps; the model reads 1 to %lu\\n", (unsigned long)s.steps, (unsigned long){NS}_MAX_STEPS);
        return 2;
    }}
    printf("logits:");
    for (o = 0; o < {NS}_D_OUT; ++o)
        printf(" %ld", (long)logits[o]);
    printf("\\nclass: %d\\nsteps: %lu\\n", cls, (unsigned long)s.steps);
    return 0;
}}
"""


def write_c(arrays: dict, manifest_like: dict, out_dir: Path, state_layout: str = "packed",
            prefix: str = "intssm", adc_scale=None) -> list[Path]:
    """Write ``<prefix>_model.h``, ``<prefix>_model.c``, ``main.c`` and ``README.md`` into ``out_dir``
    (all or none); returns the paths written. An existing ``main.c`` that is not the generated
    example is kept. Every symbol, type and macro of the header starts with ``prefix`` (``PREFIX``):
    models exported with different prefixes link into one program.

    ``arrays``: the integer model by name (:func:`intssm.integer.export.integer_model` or
    :func:`intssm.integer.export.load`); ``manifest_like``: ``model_config`` (d_model, d_state, n_layers,
    d_input, d_output, pool), ``quant_config``, ``seq_len``, ``counters`` and optionally ``input``
    (the input quantizer of float data, described in the header). ``adc_scale``: for a float-data
    model, one float32 scale per input channel of int16 ADC codes (adds ``<prefix>_input_codes_adc``).
    """
    from intssm.integer import cdoc

    ns = check_prefix(prefix)
    a, dims, _, qcfg, widths = check(arrays, manifest_like)
    iq = manifest_like.get("input")
    if adc_scale is not None:
        from intssm.datapath.inputq import InputQuant
        from intssm.integer import cinput

        if iq is None:
            raise IntssmError("--adc-scale is for models of float data; this one takes raw uint8 inputs")
        adc_scale = [float(v) for v in adc_scale]
        if len(adc_scale) == 1:
            adc_scale *= dims["D_IN"]
        cinput.adc_thresholds(InputQuant.from_dict(iq), np.array(adc_scale))  # checked before any file is written
    out_dir = outputs.check_dir(out_dir, what="C export directory")
    p = plan(a, qcfg, state_layout)
    dither = qcfg.state_rounding == "dither"
    dims["X_BYTES"] = state_bytes(p, dims["LAYERS"] * dims["H"] * dims["N2"])
    dims["STATE_BYTES"], dims["STATE_ALIGN"] = state_size(p, dims, dither)
    h_name, c_name = file_names(ns)
    files = {h_name: _header(ns, dims, layout.counter_names(dims["LAYERS"]), widths, p, dither, iq, adc_scale),
             c_name: _source(ns, a, p, widths, dims, iq, adc_scale),
             MAIN_FILE: _main(ns, manifest_like.get("input") is not None),
             cdoc.README: cdoc.readme(ns, dims, p.flash_bytes, manifest_like.get("input") is not None)}
    main = out_dir / MAIN_FILE
    if main.is_file() and not main.read_text(errors="replace").startswith(MAIN_MARK):
        del files[MAIN_FILE]  # the user's own main.c (the example is only created): kept
        print(f"keeping {main} (not the generated example)", file=sys.stderr)
    return outputs.write_texts({out_dir / name: text for name, text in files.items()})  # all or none


def c_storage(arrays: dict, manifest_like: dict, state_layout: str = "packed") -> dict:
    """Bytes the C export occupies: flash = its constant data (.rodata: :attr:`Plan.flash_bytes`,
    alignment padding not included), RAM = one ``intssm_state`` (the only mutable memory of the
    model; .data and .bss are empty; :func:`state_size`). The stack a step needs comes on top
    (measured by ``intssm export-c --target``)."""
    a, dims, _, qcfg, _ = check(arrays, manifest_like)
    p = plan(a, qcfg, state_layout)
    size, _ = state_size(p, dims, qcfg.state_rounding == "dither")
    return {"c_flash_bytes": p.flash_bytes, "c_ram_bytes": size}
