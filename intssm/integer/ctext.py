"""C text primitives of the C export: exact-width types, integer constants, initializers,
packed-field reads, the export's name space and file names."""

from __future__ import annotations

import numpy as np

from intssm.errors import IntssmError


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


def qr_macro(row: str) -> str:
    """Macro suffix of a ``qrange`` row: ``x_re`` -> ``XRE``."""
    return row.upper().replace("_", "")


def ctype_for(lo: int, hi: int) -> tuple[str, int]:
    """(C type, bytes) of the narrowest exact-width integer type holding [lo, hi]."""
    for name, nb, tmin, tmax in _CTYPES:
        if tmin <= lo and hi <= tmax:
            return name, nb
    raise IntssmError(f"values in [{lo}, {hi}] do not fit a 64-bit integer")


def c_int(v: int) -> str:
    """A C integer constant of value ``v`` that is well-typed in any initializer."""
    if -(2**31) < v < 2**31:
        return str(v)
    if v == -(2**31):
        return "(-2147483647 - 1)"
    if 0 <= v < 2**32:
        return f"UINT32_C({v})"
    return f"INT64_C({v})"


def c_initializer(v, indent: str = "", per_line: int = 16, fmt=None) -> str:
    """A brace-nested C initializer for ``v`` (one brace level per dimension); ``fmt`` writes one
    value (default: an integer constant, :func:`c_int`)."""
    fmt = fmt or (lambda x: c_int(int(x)))
    v = np.asarray(v)
    if v.ndim == 1:
        vals = [fmt(x) for x in v]
        lines = [", ".join(vals[i:i + per_line]) for i in range(0, len(vals), per_line)]
        if len(lines) <= 1:
            return "{" + (lines[0] if lines else "") + "}"
        return "{\n" + ",\n".join(indent + "    " + ln for ln in lines) + "\n" + indent + "}"
    inner = [c_initializer(x, indent + "    ", per_line, fmt) for x in v]
    return "{\n" + ",\n".join(indent + "    " + s for s in inner) + "\n" + indent + "}"


def field_read(expr: str, width: int, signed: bool) -> str:
    return f"SX({expr}, {width})" if signed else f"UX({expr}, {width})"


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


def c_hex32(v: int) -> str:
    """A 32-bit constant as C hex digits: ``0x9E3779B9``."""
    return f"0x{v:08X}"


class CExpr:
    """A C integer expression built by Python arithmetic, so that a formula written once in Python
    (e.g. :func:`intssm.datapath.fixedpoint.weyl_lane_of`) gives its C text: ``*`` parenthesizes
    compound operands, ``+`` does not (left to right, as C parses it), adding 0 leaves it as is."""

    def __init__(self, text: str, compound: bool = False):
        self.text, self.compound = text, compound

    @staticmethod
    def _operand(v) -> str:
        return f"({v.text})" if isinstance(v, CExpr) and v.compound else v.text if isinstance(v, CExpr) else str(int(v))

    def __add__(self, o):
        return self if not isinstance(o, CExpr) and o == 0 else CExpr(f"{self.text} + {o.text if isinstance(o, CExpr) else int(o)}", True)

    def __radd__(self, o):
        return self if o == 0 else CExpr(f"{int(o)} + {self.text}", True)

    def __mul__(self, o):
        return CExpr(f"{self._operand(self)} * {self._operand(o)}", True)

    def __rmul__(self, o):
        return CExpr(f"{self._operand(o)} * {self._operand(self)}", True)

