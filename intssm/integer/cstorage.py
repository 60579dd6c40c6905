"""The C export's storage plan: which constant table is held how (folded, native C array, packed
bits, the per-mode record), the packed bytes, and the state struct's layout and size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from intssm.datapath import layout
from intssm.errors import IntssmError
from intssm.integer.ctext import ctype_for


#: Every table the C model holds: all arrays of the layout except ``qrange`` and ``x_dither``,
#: which become compile-time constants (``QMIN_*``/``QMAX_*``, ``INTSSM_DITHER``).
TABLES = tuple(k for k in layout.NAMES if k not in ("qrange", "x_dither"))


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
    fr, fi = qcfg.x_re, qcfg.x_im  # the state's formats (IntModel.state_formats): b bits, signed if symmetric
    (wr, sr), (wi, si) = (fr.bits, fr.symmetric), (fi.bits, fi.symmetric)
    if state_layout == "halves":  # 16-bit halves hold every code (formats have at most 16 bits)
        wr = wi = 16
        sr = si = True  # sign-extended halves (an unsigned 16-bit code does not fit; refused below)
        if fr.qmax > 32767 or fi.qmax > 32767:
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


def pack_bits(values, width: int) -> bytes:
    """``values`` as ``width``-bit two's-complement fields, value k at bits [k w, (k + 1) w) of a
    little-endian bit string (bit b of the string is bit b % 8 of byte b // 8)."""
    acc = 0
    mask = (1 << width) - 1
    for k, v in enumerate(np.asarray(values, dtype=np.int64).ravel()):
        acc |= (int(v) & mask) << (k * width)
    n = -(-len(np.asarray(values).ravel()) * width // 8)
    return acc.to_bytes(max(n, 1), "little")[:n]


def blob(a: dict, p: Plan) -> bytes:
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
