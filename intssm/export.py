"""The integer model as an artifact: ``.npz`` of integer arrays plus a JSON manifest.

Manifest (stored as the ``manifest`` array, UTF-8 JSON bytes): ``format`` ("intssm-int"),
``format_version``, ``datapath_version``, ``intssm_version``, ``model_config``, ``quant_config``,
``seq_len``, ``counters`` (saturation counter names), ``input`` (the input quantizer of float
data, :mod:`intssm.inputq`, or null for raw uint8 inputs), and per tensor its scale / bits.
Loads with ``np.load(..., allow_pickle=False)``; versions, names, dtypes, shapes and code ranges
are validated before anything runs.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import __version__
from .errors import IntssmError
from .model import ModelConfig
from .qspec import DATAPATH_VERSION, QuantConfig

FORMAT = "intssm-int"
FORMAT_VERSION = 1
WEIGHT_KEYS = ("enc_w", "enc_b", "A_re", "A_im", "B_re", "B_im", "C_re", "C_im", "D", "mix_w", "mix_b", "dec_w", "dec_b")


def integer_model(qm) -> dict:
    """All int64 arrays of a :class:`~intssm.qmodel.QuantS4D`: datapath constants and weight codes."""
    import torch

    from .qmodel import datapath_arrays

    arrays = datapath_arrays(qm.dp)
    with torch.no_grad():
        for k, v in qm.weight_codes().items():
            arrays[k] = v.numpy().astype(np.int64)
    return arrays


def expected_shapes(cfg: ModelConfig, qcfg: QuantConfig) -> dict:
    H, N2, nl, d, C = cfg.d_model, cfg.d_state // 2, cfg.n_layers, cfg.d_input, cfg.d_output
    return {
        "enc_w": (H, d), "enc_b": (H,), "enc_w_z": (H,), "enc_M": (H,), "enc_S": (H,), "h_z": (nl + 1,),
        **{k: (nl, H, N2) for k in ("A_re", "A_im", "B_re", "B_im", "C_re", "C_im")},
        **{k: (nl, H) for k in ("A_re_z", "A_im_z", "B_z", "C_z", "D", "D_z", "x_re_z", "x_im_z",
                                "x_re_S", "x_im_S", "y_S", "h_S")},
        "x_re_M": (nl, 3, H), "x_im_M": (nl, 3, H), "y_M": (nl, 3, H), "h_M": (nl, 2, H),
        "y_z": (nl,), "act_z": (nl,), "glu_z": (nl,),
        "gelu_lut": (nl, 2**qcfg.y.bits), "sig_lut": (nl, 2**qcfg.glu.bits),
        "mix_w": (nl, 2 * H, H), "mix_w_z": (nl, 2 * H), "mix_b": (nl, 2 * H), "glu_M": (nl, 2 * H), "glu_S": (nl, 2 * H),
        "pool_M": (H,), "pool_S": (H,), "pool_z": (1,), "dec_w": (C, H), "dec_w_z": (C,), "dec_b": (C,),
        "logits_M": (C,), "logits_S": (C,), "logits_z": (1,), "qrange": (9, 2), "x_dither": (1,),
    }


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
        "seq_len": dp.seq_len, "counters": dp.counters,
        "input": qm.iq.to_dict() if qm.iq is not None else None,
        "tensors": {k: {"bits": t.fmt.bits, "symmetric": t.fmt.symmetric, "per_channel": t.fmt.per_channel,
                        "scale": t.scale.tolist(), "zero": t.zero.tolist()} for k, t in dp.tq.items()},
    }


def save(path, qm) -> dict:
    """Write the integer artifact of ``qm``; returns the manifest."""
    arrays = integer_model(qm)
    man = manifest_of(qm)
    out = {k: v.astype(_storage_dtype(v)) for k, v in arrays.items()}
    out["manifest"] = np.frombuffer(json.dumps(man).encode(), dtype=np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **out)
    return man


def load(path) -> tuple[dict, dict]:
    """(int64 arrays, manifest) of an artifact, validated; every problem is an IntssmError."""
    p = Path(path)
    if not p.is_file():
        raise IntssmError(f"integer model not found: {p}")
    try:
        z = np.load(p, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise IntssmError(f"{p}: not an npz archive (a single .npy array)")
        with z:
            raw = {k: z[k] for k in z.files}
    except ValueError as e:
        if zipfile.is_zipfile(p) and ("pickle" in str(e).lower() or "object" in str(e).lower()):
            raise IntssmError(f"{p}: contains an object (pickled) array, refused") from None
        raise IntssmError(f"{p}: not an npz archive ({str(e).splitlines()[0][:160]})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, zlib.error) as e:
        raise IntssmError(f"{p}: not a readable npz ({type(e).__name__}: {str(e)[:160]})") from None
    if "manifest" not in raw:
        raise IntssmError(f"{p}: no manifest: not an intssm integer model")
    try:
        man = json.loads(raw.pop("manifest").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IntssmError(f"{p}: manifest is not valid JSON") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise IntssmError(f"{p}: not an intssm integer model (format {man.get('format') if isinstance(man, dict) else None!r})")
    if man.get("format_version") != FORMAT_VERSION:
        raise IntssmError(f"{p}: format version {man.get('format_version')!r} not supported (this intssm reads {FORMAT_VERSION})")
    if man.get("datapath_version") != DATAPATH_VERSION:
        raise IntssmError(f"{p}: datapath version {man.get('datapath_version')!r} not supported (this intssm implements {DATAPATH_VERSION})")
    cfg = ModelConfig.from_dict(man["model_config"])
    qcfg = QuantConfig.from_dict({k: v for k, v in man["quant_config"].items()})
    shapes = expected_shapes(cfg, qcfg)
    if "x_dither" not in raw and qcfg.state_rounding == "nearest":  # written before the dithered rounding
        raw["x_dither"] = np.zeros(1, np.int64)
    missing = sorted(set(shapes) - set(raw))
    if missing:
        raise IntssmError(f"{p}: missing arrays {missing[:5]}")
    extra = sorted(set(raw) - set(shapes))
    if extra:
        raise IntssmError(f"{p}: unexpected arrays {extra[:5]}")
    arrays = {}
    for k, shp in shapes.items():
        v = raw[k]
        if not np.issubdtype(v.dtype, np.integer):
            raise IntssmError(f"{p}: array {k} has dtype {v.dtype}, expected an integer type")
        if v.shape != shp:
            raise IntssmError(f"{p}: array {k} has shape {v.shape}, expected {shp}")
        arrays[k] = v.astype(np.int64)
    _check_ranges(p, arrays, qcfg)
    if man.get("input") is not None:
        from .inputq import InputQuant

        if len(InputQuant.from_dict(man["input"]).lo) != cfg.d_input:
            raise IntssmError(f"{p}: the input quantizer's channels disagree with d_input {cfg.d_input}")
    return arrays, man


def _check_ranges(p, a: dict, q: QuantConfig):
    def within(name, fmt_name, keys):
        f = getattr(q, fmt_name)
        for k in keys:
            v = a[k]
            if v.size and (v.min() < f.qmin or v.max() > f.qmax):
                raise IntssmError(f"{p}: {k} codes outside the {f.bits}-bit range of {fmt_name}")

    within("A", "A_re", ["A_re"]); within("A", "A_im", ["A_im"])  # noqa: E702
    within("B", "B", ["B_re", "B_im"]); within("C", "C", ["C_re", "C_im"]); within("D", "D", ["D"])  # noqa: E702
    within("w", "enc_w", ["enc_w"]); within("w", "mix_w", ["mix_w"]); within("w", "dec_w", ["dec_w"])  # noqa: E702
    for k in ("enc_S", "x_re_S", "x_im_S", "y_S", "glu_S", "h_S", "pool_S", "logits_S"):
        if a[k].min() < 0 or a[k].max() > 62:
            raise IntssmError(f"{p}: shift {k} outside [0, 62]")
    for k in ("enc_M", "x_re_M", "x_im_M", "y_M", "glu_M", "h_M", "pool_M", "logits_M"):
        if a[k].min() < 0 or a[k].max() >= 2**15:
            raise IntssmError(f"{p}: multiplier {k} outside [0, 2**15)")
    for k, fmt in (("gelu_lut", q.act), ("sig_lut", q.sig)):
        if a[k].min() < fmt.qmin or a[k].max() > fmt.qmax:
            raise IntssmError(f"{p}: lookup table {k} has entries outside its code range")
    if a["x_dither"][0] != int(q.state_rounding == "dither"):
        raise IntssmError(f"{p}: x_dither {int(a['x_dither'][0])} disagrees with state_rounding {q.state_rounding!r}")
    if q.state_rounding == "dither" and max(a["x_re_S"].max(), a["x_im_S"].max()) > 32:
        raise IntssmError(f"{p}: the dithered state rounding needs state shifts <= 32")
    want = np.array([[getattr(q, n).qmin, getattr(q, n).qmax] for n in ("h", "x_re", "x_im", "y", "act", "glu", "sig", "pool", "logits")])
    if not np.array_equal(a["qrange"], want):
        raise IntssmError(f"{p}: code ranges disagree with the quant config")
