"""Reader of the UEA/UCR time-series archive's ``.ts`` text format.

A file is ``#`` comment lines, ``@`` header lines, then ``@data`` and one case per line::

    @problemName BasicMotions
    @timeStamps false
    @missing false
    @univariate false
    @dimensions 6
    @equalLength true
    @seriesLength 100
    @classLabel true Standing Running Walking Badminton
    @data
    v,v,v,...:v,v,v,...:...:Standing

Channels are separated by ``:``, values by ``,``, and the class label comes last. Series may have
unequal lengths (``@equalLength false``); every channel of one case has the same length here.
What this reader refuses, each with one :class:`~intssm.errors.IntssmError` naming file and line:
a header without ``@data``; time stamps (``@timeStamps true``: irregular sampling has no place in a
fixed-step recurrence); missing values (``?``) or NaN/inf; a non-numeric value; a channel count
that differs from ``@dimensions`` or between cases; an empty series; channels of one case with
different lengths; a label not declared by ``@classLabel``; regression targets (``@targetLabel``);
a value beyond float32's range. The file is read line by line, each case's length checked against
:data:`intssm.data.MAX_STEPS` before its values are converted and the running total against
:data:`intssm.data.MAX_VALUES`, so memory stays bounded by what the data may hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from intssm.errors import IntssmError

MAX_BYTES = 512 << 20  # a .ts file larger than this is refused before it is read
MAX_LINE_CHARS = 64 << 20  # one case per line: a longer line is refused before it is split


@dataclass
class TsData:
    """One ``.ts`` file: ``x`` (n, L_max, d) float32 zero-padded after each series' end,
    ``lengths`` (n,), ``y`` (n,) label indices into ``classes`` (the ``@classLabel`` order)."""

    x: np.ndarray
    lengths: np.ndarray
    y: np.ndarray
    classes: list
    problem: str


def _bool(v: str, key: str, where: str) -> bool:
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise IntssmError(f"{where}: @{key} must be true or false, got {v!r}")


def _int(v: str, key: str, where: str) -> int:
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise IntssmError(f"{where}: @{key} must be a positive integer, got {v!r}")
    return n


def read_ts(path: str | Path) -> TsData:
    """Parse one ``.ts`` file (see the module docstring for what is accepted and refused)."""
    from intssm.data import F32_MAX, MAX_STEPS, MAX_VALUES, regular_file

    p = regular_file(Path(path), ".ts file")
    if p.stat().st_size > MAX_BYTES:
        raise IntssmError(f"{p}: larger than {MAX_BYTES >> 20} MiB")
    try:
        with open(p, encoding="utf-8") as f:
            return _parse(p, f, F32_MAX, MAX_STEPS, MAX_VALUES)
    except UnicodeDecodeError as e:
        raise IntssmError(f"{p}: not a UTF-8 text file ({e.reason})") from None


def _lines(p: Path, f):
    """(line number, line) of ``f``, refusing a line longer than :data:`MAX_LINE_CHARS`."""
    ln = 0
    while True:
        line = f.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        ln += 1
        if len(line) > MAX_LINE_CHARS:
            raise IntssmError(f"{p}:{ln}: a line longer than {MAX_LINE_CHARS >> 20} MiB characters")
        yield ln, line


def _parse(p: Path, f, f32_max: float, max_steps: int, max_values: int) -> TsData:
    head: dict = {}
    classes: list | None = None
    rows: list = []
    labels: list = []
    in_data = False
    total = 0
    for ln, raw in _lines(p, f):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{p}:{ln}"
        if not in_data:
            if not line.startswith("@"):
                raise IntssmError(f"{where}: expected a header line (@...) or @data before the values")
            key, _, val = line[1:].partition(" ")
            key, val = key.lower(), val.strip()
            if key == "data":
                in_data = True
            elif key == "classlabel":
                parts = val.split()
                if not parts or not _bool(parts[0], "classLabel", where):
                    raise IntssmError(f"{where}: @classLabel false: only classification data is supported")
                classes = parts[1:]
                if not classes or len(set(classes)) != len(classes):
                    raise IntssmError(f"{where}: @classLabel must list distinct class labels")
            elif key == "targetlabel":
                raise IntssmError(f"{where}: @targetLabel: regression data is not supported (classification only)")
            elif key in ("timestamps", "missing", "univariate", "equallength"):
                head[key] = _bool(val, key, where)
            elif key in ("dimensions", "serieslength"):
                head[key] = _int(val, key, where)
            else:
                head[key] = val
            continue
        if head.get("timestamps"):
            raise IntssmError(f"{p}: @timeStamps true (irregularly sampled series) is not supported")
        *chans, label = line.split(":")
        label = label.strip()
        if not chans:
            raise IntssmError(f"{where}: a case needs values and a class label separated by ':'")
        if classes is None:
            raise IntssmError(f"{p}: no @classLabel header before @data")
        if label not in classes:
            raise IntssmError(f"{where}: label {label!r} is not one of @classLabel {classes}")
        d = head.get("dimensions", len(chans) if not rows else rows[0].shape[1])
        if len(chans) != d:
            raise IntssmError(f"{where}: {len(chans)} channels, expected {d}")
        series = []
        for c, ch in enumerate(chans):
            if not ch.strip():
                raise IntssmError(f"{where}: channel {c} is an empty series")
            steps = ch.count(",") + 1
            if steps > max_steps:
                raise IntssmError(f"{where}: channel {c} has {steps:,} steps; intssm takes at most {max_steps:,} "
                                  "(cut the series into windows)")
            total += steps
            if total > max_values:
                raise IntssmError(f"{p}: more than {max_values:,} values; intssm takes at most that many per file")
            vals = ch.split(",")
            try:
                v = [float(s) for s in vals]
            except ValueError:
                bad = next(s for s in vals if not _is_float(s))
                kind = "a missing value" if bad.strip() == "?" else f"a non-numeric value {bad.strip()[:20]!r}"
                raise IntssmError(f"{where}: channel {c} has {kind}") from None
            if not all(math.isfinite(t) for t in v):
                raise IntssmError(f"{where}: channel {c} has a NaN or infinite value")
            big = max(abs(t) for t in v)
            if big > f32_max:
                raise IntssmError(f"{where}: channel {c} has a value of magnitude {big:.3g}, beyond float32's "
                                  f"{f32_max:.4g}; rescale the data")
            series.append(v)
        n = len(series[0])
        if any(len(s) != n for s in series):
            raise IntssmError(f"{where}: channels have different lengths {[len(s) for s in series]}")
        if head.get("equallength") and "serieslength" in head and n != head["serieslength"]:
            raise IntssmError(f"{where}: series of length {n}, @seriesLength says {head['serieslength']}")
        rows.append(np.asarray(series, np.float32).T)  # (L, d)
        labels.append(classes.index(label))
    if not in_data:
        raise IntssmError(f"{p}: no @data line: not a .ts file")
    if not rows:
        raise IntssmError(f"{p}: no cases after @data")
    lengths = np.array([len(r) for r in rows], np.int64)
    from intssm.data import check_shape

    check_shape((len(rows), int(lengths.max()), rows[0].shape[1]), f"{p} (padded to its longest case)")
    x = np.zeros((len(rows), int(lengths.max()), rows[0].shape[1]), np.float32)
    for i, r in enumerate(rows):
        x[i, : len(r)] = r
    return TsData(x, lengths, np.array(labels, np.int64), classes, head.get("problemname", p.stem))


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def ts_pair(path: str | Path) -> tuple[Path, Path]:
    """(TRAIN file, TEST file) of a dataset given as its directory (holding ``NAME_TRAIN.ts`` and
    ``NAME_TEST.ts``) or as the path of its TRAIN file."""
    p = Path(path)
    if p.is_dir():
        trains = sorted(p.glob("*_TRAIN.ts"))
        if len(trains) != 1:
            raise IntssmError(f"{p}: expected exactly one NAME_TRAIN.ts file, found {len(trains)}")
        p = trains[0]
    if not p.name.endswith("_TRAIN.ts"):
        raise IntssmError(f"{p}: give the dataset's directory or its NAME_TRAIN.ts file")
    test = p.with_name(p.name[: -len("_TRAIN.ts")] + "_TEST.ts")
    if not test.is_file():
        raise IntssmError(f"{p}: the matching test file {test.name} is missing")
    return p, test


def is_ts_dataset(path: str | Path) -> bool:
    p = Path(path)
    return (p.is_file() and p.name.endswith("_TRAIN.ts")) or (p.is_dir() and any(p.glob("*_TRAIN.ts")))
