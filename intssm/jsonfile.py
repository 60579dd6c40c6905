"""Reading JSON that a user hands intssm (quant configs, artifact manifests): bounded in size and
nesting before it is parsed, with every failure one :class:`~intssm.errors.IntssmError`.

Python's parser recurses once per nesting level and converts integers of any length, so a file
of ``[`` * 100000 or a 5,000-digit number would otherwise end in a ``RecursionError`` or
``ValueError`` traceback. Here a document deeper than :data:`MAX_DEPTH`, larger than
:data:`MAX_BYTES`, holding an integer longer than :data:`MAX_INT_DIGITS` digits, or the
non-standard constants ``NaN`` / ``Infinity`` is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from intssm.errors import IntssmError

MAX_BYTES = 1 << 20  # a quant config or manifest is a few kilobytes
MAX_DEPTH = 32  # a quant config nests 2 levels, a manifest 4
MAX_INT_DIGITS = 64

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_LONG_INT = re.compile(r"(?<![\w.])-?\d{%d,}" % (MAX_INT_DIGITS + 1))


def depth(text: str) -> int:
    """Deepest nesting of ``[`` / ``{`` in a JSON text, strings left out."""
    bare = _STRING.sub('""', text).encode()
    if not bare:
        return 0
    b = np.frombuffer(bare, np.uint8)
    step = (np.isin(b, (ord("["), ord("{"))).astype(np.int64) - np.isin(b, (ord("]"), ord("}"))))
    return int(np.cumsum(step).max(initial=0))


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def loads(text: str, what: str):
    """Parse ``text`` (module docstring); ``what`` names it in messages."""
    if len(text) > MAX_BYTES:
        raise IntssmError(f"{what} is {len(text):,} characters of JSON (limit {MAX_BYTES:,})")
    d = depth(text)
    if d > MAX_DEPTH:
        raise IntssmError(f"{what} is JSON nested {d} levels deep (limit {MAX_DEPTH})")
    if _LONG_INT.search(_STRING.sub('""', text)):
        raise IntssmError(f"{what} holds a number of more than {MAX_INT_DIGITS} digits")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        raise IntssmError(f"{what} is not valid JSON ({str(e).splitlines()[0][:160]})") from None


def load(path, what: str | None = None):
    """Parse the JSON file ``path``, its size checked before it is read."""
    from intssm.data import regular_file

    p = regular_file(Path(path), what or "JSON file")
    if p.stat().st_size > MAX_BYTES:
        raise IntssmError(f"{p}: {p.stat().st_size:,} bytes of JSON (limit {MAX_BYTES:,})")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise IntssmError(f"{p}: not a UTF-8 text file ({e.reason})") from None
    return loads(text, str(p))
