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
from intssm.outputs import save_or_rescue
from intssm.training.model import ModelConfig, S4DModel

FORMAT = "intssm-ckpt"


def save(path, model: S4DModel, quiet: bool = False, **extra) -> None:
    """Write ``model`` and ``extra`` entries atomically (:func:`intssm.outputs.atomic`); if that
    fails, to ``$INTSSM_RESCUE_DIR`` when set (:func:`intssm.outputs.save_or_rescue`)."""
    ck = {
        "format": FORMAT,
        "intssm_version": __version__,
        "model_config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
    ck.update(extra)
    save_or_rescue(path, lambda tmp: torch.save(ck, tmp), quiet)  # a reader (or a crash) never sees half a file


MODEL_KEYS = ("format", "intssm_version", "model_config", "state_dict")


def extras(ck: dict, *drop: str) -> dict:
    """A checkpoint's entries other than the model itself (and ``drop``): what a command carries
    from the checkpoint it read into the one it writes (dataset, training log, ...)."""
    return {k: v for k, v in ck.items() if k not in MODEL_KEYS + drop}


def dataset_seq(ck: dict, default: str | None = "smnist"):
    """The dataset a checkpoint was trained on (:func:`load_raw` has checked the entry's type)."""
    return ck.get("dataset", {}).get("seq", default)


def dataset_entry(seq: str, ds, val_fraction) -> dict:
    """What a checkpoint records of its dataset: the source, its checksum, the validation split."""
    return {"seq": seq, "checksum": ds.checksum, "val_fraction": val_fraction}


def check_own_data(path, ck: dict, ds, other_data: bool) -> str | None:
    """Refuse data ``ds`` whose checksum differs from the one checkpoint ``ck`` records of its own
    dataset (a model scored on other data of the same shape would report an accuracy without a
    word), unless ``other_data`` says that is meant; then returns the note to print (else None)."""
    entry = ck.get("dataset") if isinstance(ck.get("dataset"), dict) else {}
    own = entry.get("checksum")
    if not own or ds.checksum == own:
        return None
    if not other_data:
        raise IntssmError(f"{path} was trained on {entry.get('seq')!r}; {ds.name.rsplit(':', 1)[0]!r} holds other data "
                          "(its checksum differs): add --other-data to score it anyway")
    return f"note: {ds.name} is not the data {path} was trained on (--other-data)"


def val_fraction(ck: dict):
    """The validation fraction a checkpoint was trained with (None: the default split)."""
    v = ck.get("dataset", {}).get("val_fraction")
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


#: Largest tensor a checkpoint may hold (elements): a model within intssm's size limits has far fewer.
MAX_TENSOR_ELEMENTS = 1 << 26


def _tensors(obj, path: str = "", depth: int = 0):
    """(name, tensor) of every tensor inside ``obj`` (dicts, lists, tuples), to a bounded depth."""
    if depth > 32:
        raise IntssmError(f"checkpoint entry {path or '(top)'} is nested more than 32 levels deep")
    if torch.is_tensor(obj):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}.{k}" if path else str(k), depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}[{i}]", depth + 1)


def check_tensors(p, ck: dict) -> None:
    """Every tensor of the checkpoint must be a plain dense one: at most :data:`MAX_TENSOR_ELEMENTS`
    elements, all inside its own storage, none sharing memory with another (a stride-0 "expanded"
    tensor of 6 KB can claim 10^10 elements, which any operation on it would allocate)."""
    for name, t in _tensors(ck):
        if t.layout != torch.strided or t.is_quantized:
            raise IntssmError(f"{p}: tensor {name} is not a dense tensor ({t.layout}); not an intssm checkpoint")
        n = t.numel()
        if n > MAX_TENSOR_ELEMENTS:
            raise IntssmError(f"{p}: tensor {name} has {n:,} elements (limit {MAX_TENSOR_ELEMENTS:,}); not an intssm checkpoint")
        if n and (any(s == 0 for s, d in zip(t.stride(), t.shape) if d > 1) or not t.is_contiguous()):
            raise IntssmError(f"{p}: tensor {name} is not contiguous (shape {tuple(t.shape)}, strides {t.stride()}); "
                              "intssm writes only contiguous tensors")
        if (t.storage_offset() + n) * t.element_size() > t.untyped_storage().nbytes():
            raise IntssmError(f"{p}: tensor {name} claims more bytes than its storage holds")


def _looks_like_torch(p: Path) -> str | None:
    """None if ``p`` starts like a file torch.save writes (a zip archive, or the legacy pickle
    format); else what it looks like, for the message."""
    with open(p, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return None
    if not head:
        return "an empty file"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return f"a file starting with bytes {head[:4].hex()}"


def load_raw(path) -> dict:
    """The checkpoint dict, with every failure turned into a one-line :class:`IntssmError`."""
    from intssm.data import regular_file

    p = regular_file(Path(path), "checkpoint")
    kind = _looks_like_torch(p)
    if kind is not None:
        raise IntssmError(f"{p}: not a readable intssm checkpoint (it is {kind}; a checkpoint is a .pt file written by intssm)")
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
    check_tensors(p, ck)
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


def check_resume(p, state: dict) -> None:
    """A resume state (what ``intssm train`` saves when interrupted) must have the types training
    reads and finite numbers: weights, the best weights, and the optimizer's moments (``exp_avg_sq``
    >= 0). A state that fails is refused before training starts."""
    if not isinstance(state, dict):
        raise IntssmError(f"{p}: resume state must be a dictionary")
    need = {"model": dict, "best": (dict, type(None)), "optimizer": dict, "history": list, "step": int,
            "best_acc": (int, float)}
    for k, t in need.items():
        if k not in state or not isinstance(state[k], t) or isinstance(state[k], bool):
            raise IntssmError(f"{p}: resume state entry {k!r} is missing or has the wrong type; the file is damaged "
                              "(start a new run without --resume)")
    if not all(isinstance(r, dict) for r in state["history"]) or state["step"] < 0:
        raise IntssmError(f"{p}: resume state's history or step is damaged (start a new run without --resume)")
    for name, t in _tensors({k: state[k] for k in ("model", "best", "optimizer")}):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise IntssmError(f"{p}: resume state tensor {name} holds NaN or inf; the run had diverged: start a new "
                              "run (e.g. with a lower --lr) instead of resuming")
        if name.endswith("exp_avg_sq") and t.is_floating_point() and bool((t < 0).any()):
            raise IntssmError(f"{p}: resume state tensor {name} is negative (a second moment cannot be); the file is damaged")
