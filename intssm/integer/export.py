"""The integer model as an artifact: ``.npz`` of integer arrays plus a JSON manifest.

Manifest (stored as the ``manifest`` array, UTF-8 JSON bytes): ``format`` ("intssm-int"),
``format_version``, ``datapath_version``, ``intssm_version``, ``model_config``, ``quant_config``,
``seq_len``, ``counters`` (saturation counter names), ``input`` (the input quantizer of float
data, :mod:`intssm.datapath.inputq`, or null for raw uint8 inputs), and per tensor its scale / bits.
Loads with ``np.load(..., allow_pickle=False)``; versions, names, dtypes, shapes and code ranges
are validated before anything runs.
"""

from __future__ import annotations

import json
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from intssm import __version__
from intssm.datapath import layout
from intssm.errors import IntssmError
from intssm.outputs import atomic
from intssm.datapath.modelconfig import ModelConfig
from intssm.datapath.qspec import DATAPATH_VERSION, QuantConfig

FORMAT = "intssm-int"
FORMAT_VERSION = 1


def integer_model(qm) -> dict:
    """All int64 arrays of a :class:`~intssm.training.qmodel.QuantS4D`, named as in :mod:`intssm.datapath.layout`:
    the datapath's constants and the weight codes."""
    import torch

    arrays = layout.from_datapath(qm.dp)
    with torch.no_grad():
        for k, v in qm.weight_codes().items():
            arrays[k] = v.numpy().astype(np.int64)
    return arrays


def from_quantized(qm):
    """The :class:`~intssm.datapath.intmodel.IntModel` of a :class:`~intssm.training.qmodel.QuantS4D`:
    its :func:`integer_model` arrays, configs, ``seq_len`` and input quantizer, through
    :func:`intssm.datapath.layout.validate`."""
    dp = qm.dp
    return layout.validate(integer_model(qm), dp.cfg, dp.qcfg, dp.seq_len, qm.iq)


def _check_manifest(p, man) -> None:
    """The manifest's own fields: format, versions and the types of what the loaders read."""
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise IntssmError(f"{p}: not an intssm integer model (format {man.get('format') if isinstance(man, dict) else None!r})")
    if man.get("format_version") != FORMAT_VERSION:
        raise IntssmError(f"{p}: format version {man.get('format_version')!r} not supported (this intssm reads {FORMAT_VERSION})")
    if man.get("datapath_version") != DATAPATH_VERSION:
        raise IntssmError(f"{p}: datapath version {man.get('datapath_version')!r} not supported (this intssm implements {DATAPATH_VERSION})")
    tens = man.get("tensors")
    if not isinstance(tens, dict) or not tens:
        raise IntssmError(f"{p}: manifest field tensors must be an object of per-tensor scales")
    for k, t in tens.items():
        ok = isinstance(t, dict) and isinstance(t.get("bits"), int) and isinstance(t.get("scale"), list) \
            and isinstance(t.get("zero"), list) and len(t["scale"]) == len(t["zero"]) >= 1 \
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in t["scale"]) \
            and all(isinstance(v, int) and not isinstance(v, bool) for v in t["zero"])
        if not ok:
            raise IntssmError(f"{p}: manifest tensor {k!r} needs bits, finite positive scales and integer zero points")


def _storage_dtype(v: np.ndarray):
    for dt in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dt)
        if v.size == 0 or (v.min() >= info.min and v.max() <= info.max):
            return dt
    return np.int64


def manifest_of(qm) -> dict:
    dp = qm.dp
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "datapath_version": DATAPATH_VERSION,
        "intssm_version": __version__, "model_config": dp.cfg.to_dict(), "quant_config": dp.qcfg.to_dict(),
        "seq_len": dp.seq_len, "counters": layout.counter_names(dp.cfg.n_layers),
        "input": qm.iq.to_dict(),
        "tensors": {k: {"bits": t.fmt.bits, "symmetric": t.fmt.symmetric, "per_channel": t.fmt.per_channel,
                        "scale": t.scale.tolist(), "zero": t.zero.tolist()} for k, t in dp.tq.items()},
    }


def save(path, qm, m=None, quiet: bool = False, extra: dict | None = None) -> dict:
    """Write the integer artifact of ``qm`` (``m``: its :func:`from_quantized` model, if already
    built; ``extra``: more manifest fields, e.g. the integer-model cache's binding); returns the
    manifest."""
    m = from_quantized(qm) if m is None else m
    man = manifest_of(qm) | (extra or {})
    out = {k: v.astype(_storage_dtype(v)) for k, v in m.arrays.items()}
    out["manifest"] = np.frombuffer(json.dumps(man).encode(), dtype=np.uint8)
    with atomic(path, quiet) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **out)
    return man


#: Largest manifest accepted (bytes): a real one is a few kilobytes.
MAX_MANIFEST_BYTES = 1 << 20


def _member_header(z: zipfile.ZipFile, info: zipfile.ZipInfo):
    """(shape, dtype) from an .npy member's header, reading only the header (never the data)."""
    with z.open(info) as f:
        major, _ = np.lib.format.read_magic(f)
        read = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}.get(major)
        if read is None:
            raise ValueError(f"npy format version {major}")
        shape, _, dtype = read(f)
        return shape, dtype, f.tell()


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with z.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def load(path):
    """The :class:`~intssm.datapath.intmodel.IntModel` of an artifact (:func:`load_with_manifest`)."""
    return load_with_manifest(path)[0]


def load_with_manifest(path):
    """(IntModel, manifest) of an artifact, validated and re-proved once
    (:func:`intssm.datapath.layout.validate`); every problem is an IntssmError.

    Memory stays bounded for any file: the manifest is read first (at most
    :data:`MAX_MANIFEST_BYTES`), then every member's header, whose shape and dtype must be the
    layout's before a byte of its data is inflated."""
    p = Path(path)
    if not p.is_file():
        raise IntssmError(f"integer model not found: {p}")
    if not zipfile.is_zipfile(p):
        with open(p, "rb") as f:
            head = f.read(6)
        if head == b"\x93NUMPY":
            raise IntssmError(f"{p}: not an npz archive (a single .npy array)")
        raise IntssmError(f"{p}: not a readable npz (not a zip archive, or a truncated one)")
    try:
        with zipfile.ZipFile(p) as z:
            infos = {i.filename: i for i in z.infolist()}
            if "manifest.npy" not in infos:
                raise IntssmError(f"{p}: no manifest: not an intssm integer model")
            mi = infos.pop("manifest.npy")
            if mi.file_size > MAX_MANIFEST_BYTES:
                raise IntssmError(f"{p}: manifest of {mi.file_size} bytes (limit {MAX_MANIFEST_BYTES})")
            shape, dtype, _ = _member_header(z, mi)
            if dtype != np.uint8 or len(shape) != 1:
                raise IntssmError(f"{p}: the manifest must be a 1-d uint8 array, got {dtype} {shape}")
            try:
                from intssm import jsonfile

                man = jsonfile.loads(_read_member(z, mi).tobytes().decode(), f"{p}: manifest")
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise IntssmError(f"{p}: manifest is not valid JSON (or nested too deeply)") from None
            _check_manifest(p, man)
            try:
                cfg = ModelConfig.from_dict(man.get("model_config"))
                qcfg = QuantConfig.from_dict(man.get("quant_config"))
            except IntssmError as e:
                raise IntssmError(f"{p}: {e}") from None
            shapes = layout.expected_shapes(cfg, qcfg)
            raw = {}
            for name, info in infos.items():
                key = name[:-4] if name.endswith(".npy") else name
                if key not in shapes:
                    raise IntssmError(f"{p}: unexpected arrays {[key]}")
                shape, dtype, hdr = _member_header(z, info)
                if dtype.hasobject:
                    raise IntssmError(f"{p}: contains an object (pickled) array, refused")
                if dtype.kind not in "iu":
                    raise IntssmError(f"{p}: array {key} has dtype {dtype}, expected an integer type")
                if tuple(shape) != shapes[key]:
                    raise IntssmError(f"{p}: array {key} has shape {tuple(shape)}, expected {shapes[key]}")
                if info.file_size > hdr + dtype.itemsize * math.prod(shape):
                    raise IntssmError(f"{p}: member {name} inflates to {info.file_size} bytes, more than its shape holds")
                raw[key] = _read_member(z, info)
    except IntssmError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise IntssmError(f"{p}: contains an object (pickled) array, refused") from None
        raise IntssmError(f"{p}: not a readable npz ({str(e).splitlines()[0][:160]})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, zlib.error, NotImplementedError) as e:
        raise IntssmError(f"{p}: not a readable npz ({type(e).__name__}: {str(e)[:160]})") from None
    try:
        from intssm.datapath.inputq import from_entry

        if man.get("counters") != layout.counter_names(cfg.n_layers):
            raise IntssmError(f"counters must be the {layout.n_counters(cfg.n_layers)} names "
                              f"{layout.counter_names(cfg.n_layers)[:3]}...")
        m = layout.validate(raw, cfg, qcfg, man.get("seq_len"), from_entry(man.get("input"), cfg.d_input))
    except IntssmError as e:
        raise IntssmError(f"{p}: {e}") from None
    return m, man
