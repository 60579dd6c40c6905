"""Checkpoints: a plain dict loaded with ``torch.load(..., weights_only=True)``.

Keys: ``format`` ("intssm-ckpt"), ``intssm_version``, ``model_config`` (dict), ``state_dict``,
``metrics`` (training history), ``dataset`` ({"seq", "checksum"}), ``train_args``, and for
quantized models ``qspec`` (the datapath description, see :mod:`intssm.datapath.qspec`).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from intssm import __version__
from intssm.errors import IntssmError
from intssm.outputs import atomic
from intssm.training.model import ModelConfig, S4DModel

FORMAT = "intssm-ckpt"


def save(path, model: S4DModel, quiet: bool = False, **extra) -> None:
    """Write ``model`` and ``extra`` entries atomically (:func:`intssm.outputs.atomic`)."""
    ck = {
        "format": FORMAT,
        "intssm_version": __version__,
        "model_config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
    ck.update(extra)
    with atomic(path, quiet) as tmp:  # a reader (or a crash) never sees half a file
        torch.save(ck, tmp)


MODEL_KEYS = ("format", "intssm_version", "model_config", "state_dict")


def extras(ck: dict, *drop: str) -> dict:
    """A checkpoint's entries other than the model itself (and ``drop``): what a command carries
    from the checkpoint it read into the one it writes (dataset, training log, ...)."""
    return {k: v for k, v in ck.items() if k not in MODEL_KEYS + drop}


def dataset_seq(ck: dict, default: str | None = "smnist"):
    """The dataset a checkpoint was trained on (:func:`load_raw` has checked the entry's type)."""
    return ck.get("dataset", {}).get("seq", default)


def val_fraction(ck: dict):
    """The validation fraction a checkpoint was trained with (None: the default split)."""
    v = ck.get("dataset", {}).get("val_fraction")
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def load_raw(path) -> dict:
    """The checkpoint dict, with every failure turned into a one-line :class:`IntssmError`."""
    p = Path(path)
    if not p.is_file():
        raise IntssmError(f"checkpoint not found: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ck = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise IntssmError(f"{p}: not a readable intssm checkpoint (holds objects other than tensors and plain data)") from None
    except Exception as e:  # torch raises many types on foreign bytes (RuntimeError, KeyError, ...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise IntssmError(f"{p}: not a readable intssm checkpoint ({type(e).__name__}: {msg[:100]})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise IntssmError(f"{p}: not an intssm checkpoint (no format={FORMAT!r} entry)")
    for key in ("model_config", "state_dict"):
        if not isinstance(ck.get(key), dict):
            raise IntssmError(f"{p}: checkpoint lacks {key!r} (or it is not a dictionary)")
    for key in ("dataset", "qspec", "train_args", "input_quant", "interrupted", "resume"):  # optional entries
        if key in ck and not isinstance(ck[key], dict) and not (key == "input_quant" and ck[key] is None):
            raise IntssmError(f"{p}: checkpoint entry {key!r} must be a dictionary, got {type(ck[key]).__name__}")
    ds = ck.get("dataset")
    if ds is not None and not isinstance(ds.get("seq", ""), str):
        raise IntssmError(f"{p}: checkpoint entry 'dataset' must name its dataset as a string")
    if "qspec" in ck and not isinstance(ck["qspec"].get("quant_config"), dict):
        raise IntssmError(f"{p}: checkpoint entry 'qspec' lacks its quant_config")
    return ck


def load(path) -> tuple[S4DModel, dict]:
    """(float model in eval mode, checkpoint dict). Rejects wrong shapes and non-finite weights.

    The model has the precision of the stored weights: float64 for QAT checkpoints (so the codes
    ``round(w / s)`` are those QAT validated), float32 otherwise."""
    ck = load_raw(path)
    cfg = ModelConfig.from_dict(dict(ck["model_config"]))
    model = S4DModel(cfg)
    sd = ck["state_dict"]
    if any(torch.is_tensor(v) and v.dtype == torch.float64 for v in sd.values()):
        model = model.double()
    for k, v in sd.items():
        if not torch.is_tensor(v):
            raise IntssmError(f"{path}: state_dict entry {k!r} is not a tensor")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise IntssmError(f"{path}: weight {k!r} contains NaN or inf")
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        first = [ln.strip() for ln in str(e).splitlines() if ln.strip()][1:2] or [str(e)[:160]]
        raise IntssmError(f"{path}: weights do not fit the model config ({first[0][:200]})") from None
    model.eval()
    return model, ck
