"""Loading an integer model from any of its sources, and running it over a dataset.

:func:`load` returns a :class:`LoadedModel`: the :class:`~intssm.datapath.intmodel.IntModel`
(validated once, by :func:`intssm.datapath.layout.validate`) with what its source adds (a
description, the checkpoint's dataset, the Torch quantized model when asked for).

Sources: an exported ``.npz`` (integer arrays only: nothing to verify against), a quantized
checkpoint (``qspec`` entry), or a float checkpoint, which gets the default PTQ (``w8a8``,
ranges calibrated on the first ``calib`` training sequences).

A quantized checkpoint loaded without its Torch model (``torch_model=False``: nothing will be
verified against it) comes from the integer-model cache when it can: the integer artifact of that
checkpoint, written the first time it is loaded and named by the SHA-256 of the checkpoint's bytes
and of intssm's own source, so that a changed checkpoint or a changed intssm never meets a stale
entry. The key also holds the versions of Torch and NumPy, which do the conversion.

What the cache trusts: nothing it did not write for this key. An entry is an artifact like any
other (:func:`intssm.integer.export.load` validates it and re-proves its bounds) whose manifest
also binds it to its source: ``cache.key`` is the entry's own key (the checkpoint's bytes and the
code's hash) and ``cache.digest`` the SHA-256 of its integer arrays (:func:`arrays_digest`). An
entry that does not load, whose stored key is not the key it is read for (an entry copied or
renamed from another checkpoint, an artifact exported into the cache), or whose arrays do not
match the digest (edited integers) is rebuilt from the checkpoint, never used. This guards against
damage, swaps and stale or foreign files; it is a checksum, not a signature: whoever can write the
cache directory and run intssm's code can write a consistent entry, as they could edit intssm
itself. The cache lives in
``$INTSSM_CACHE_DIR``, else ``$XDG_CACHE_HOME/intssm``, else ``~/.cache/intssm``; a cache that
cannot be written is skipped. Loading this way needs neither Torch nor the float weights, which
is what makes a new process fast (``intssm simulate --verify 0``).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from intssm import data
from intssm.errors import IntssmError
from intssm.integer import export
from intssm.integer.sim import simulate

DEFAULT_CONFIG = "w8a8"


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded from a source: the validated integer model (:class:`~intssm.datapath.intmodel.IntModel`,
    which every execution and exporter takes) and what its source adds."""

    model: object  # the IntModel
    source: str  # what was loaded, in words
    qm: object = None  # the Torch quantized model (QuantS4D), when the source has float weights and it was asked for
    dataset: str | None = None  # the checkpoint's dataset (None for an artifact)

    def input_codes(self, ds) -> np.ndarray:
        """The uint8 codes the datapath takes for dataset ``ds`` (the model's input quantizer)."""
        try:
            return self.model.input_codes(ds.x, ds.lengths)
        except IntssmError as e:
            raise IntssmError(f"{ds.name}: {e}") from None

    def check_data(self, ds) -> None:
        """Refuse data the integer model cannot score: labels beyond its classes, or sequences of
        another length for a mean-pooling model."""
        m = self.model
        ds.check_labels(m.cfg.d_output)
        if m.mean_pool and (ds.x.shape[1] != m.seq_len or ds.varlen):
            raise IntssmError(f"model mean-pools over exactly {m.seq_len} steps; {ds.name} has sequences of "
                              f"length {int(ds.lengths.min())}..{int(ds.lengths.max())}")


def arrays_digest(arrays: dict) -> str:
    """SHA-256 of an integer model's arrays: each name, shape and int64 little-endian values, in name order."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        v = np.ascontiguousarray(arrays[k], dtype="<i8")
        h.update(f"{k}\0{v.shape}\0".encode())
        h.update(v.tobytes())
    return h.hexdigest()


def cache_dir() -> Path:
    """Where the integer-model cache lives (module docstring)."""
    if os.environ.get("INTSSM_CACHE_DIR"):
        return Path(os.environ["INTSSM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "intssm"


_CODE_HASH = None


def _code_hash() -> str:
    """SHA-256 of intssm's Python source and of the versions of Torch and NumPy, which convert a
    checkpoint: any change to how a checkpoint becomes integers changes it."""
    global _CODE_HASH
    if _CODE_HASH is None:
        from importlib.metadata import PackageNotFoundError, version

        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for f in sorted(root.rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
        for pkg in ("torch", "numpy"):
            try:
                h.update(f"{pkg}=={version(pkg)}\0".encode())
            except PackageNotFoundError:
                h.update(f"{pkg}: none\0".encode())
        _CODE_HASH = h.hexdigest()
    return _CODE_HASH


def _cache_entry(p: Path) -> Path:
    h = hashlib.sha256(_code_hash().encode())
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return cache_dir() / "integer-models" / f"{h.hexdigest()}.npz"


def load(path, calib: int = 64, config: str = DEFAULT_CONFIG, torch_model: bool = True) -> LoadedModel:
    """The integer model of ``path`` (module docstring), validated once. ``torch_model=False``: the
    caller will not verify against the Torch quantized model, so a quantized checkpoint may come
    from the cache (``qm`` is then None)."""
    p = Path(path)
    if p.suffix == ".npz":
        return LoadedModel(export.load(p), f"{p} (integer artifact)")
    entry = None
    if not torch_model:
        try:
            entry = _cache_entry(p) if p.is_file() else None
            hit = entry is not None and entry.is_file()
        except OSError:  # an unreadable checkpoint is reported by the load below; an unusable cache is skipped
            entry, hit = None, False
        if hit:
            try:
                m, man = export.load_with_manifest(entry)
                if man.get("cache") == {"key": entry.stem, "digest": arrays_digest(m.arrays)}:
                    return LoadedModel(m, f"{p} (quantized checkpoint; integer arrays from the cache)")
            except Exception:  # noqa: BLE001 (a cache entry is untrusted: whatever fails to load is rebuilt below)
                pass
    from intssm.datapath.qspec import PRESETS
    from intssm.training import checkpoint
    from intssm.training.ptq import from_checkpoint, ptq_dataset

    model, ck = checkpoint.load(p)
    model = model.double()
    if "qspec" in ck:
        qm = from_checkpoint(model, ck)
        src = f"{p} (quantized checkpoint)"
    else:
        if config not in PRESETS:
            raise IntssmError(f"unknown quant config {config!r}")
        seq = checkpoint.dataset_seq(ck)
        cal = data.load(seq, "train", calib)
        qm, _ = ptq_dataset(model, PRESETS[config], cal)
        src = f"{p} (float checkpoint, default PTQ {config} calibrated on {calib} training sequences)"
    m = export.from_quantized(qm)
    dataset = checkpoint.dataset_seq(ck, None)
    if entry is not None and "qspec" in ck:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            export.save(entry, qm, m, quiet=True, extra={"cache": {"key": entry.stem, "digest": arrays_digest(m.arrays)}})
        except (OSError, IntssmError):
            pass  # no writable cache (or a full disk): the next load converts again
    return LoadedModel(m, src, qm if torch_model else None, dataset)


def run(m, P: np.ndarray, chunk: int = 1000, progress=None, lengths: np.ndarray | None = None):
    """(logit codes (n, C), saturation counts (n, counters), seconds in the simulator) of the
    integer model ``m`` (an IntModel) on input codes ``P`` (n, L, d), sequence i run for
    ``lengths[i]`` steps (None: all L)."""
    out, cnts, t = [], [], 0.0
    for i in range(0, len(P), chunk):
        t0 = time.perf_counter()
        lens = None if lengths is None else lengths[i : i + chunk]
        lg, c, _ = simulate(m, P[i : i + chunk], lengths=lens)
        t += time.perf_counter() - t0
        out.append(lg)
        cnts.append(c)
        if progress:
            progress(len(lg))
    return np.concatenate(out), np.concatenate(cnts), t


def torch_logits(qm, P: np.ndarray, chunk: int = 500, progress=None, lengths: np.ndarray | None = None):
    """Logit codes from the Torch quantized model ``qm`` (QuantS4D), as an int64 numpy array."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(P), chunk):
            lens = None if lengths is None else torch.from_numpy(lengths[i : i + chunk])
            lg, _ = qm(torch.from_numpy(P[i : i + chunk]), lengths=lens)
            out.append(lg.numpy().astype(np.int64))
            if progress:
                progress(len(lg))
    return np.concatenate(out)


def float_accuracy(qm, P: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None, chunk: int = 500) -> float:
    """Accuracy of the float weights of the Torch quantized model ``qm`` (``qm.model``, which reads
    input codes as :func:`intssm.datapath.inputq.model_input`; convolution mode) on input codes ``P``: what the integer model is
    compared with."""
    import torch

    from intssm.datapath.inputq import model_input

    hits = 0
    with torch.no_grad():
        for i in range(0, len(P), chunk):
            lens = None if lengths is None else torch.from_numpy(lengths[i : i + chunk])
            u = torch.from_numpy(model_input(P[i : i + chunk])).to(next(qm.model.parameters()).dtype)
            hits += int((qm.model.eval()(u, lengths=lens).argmax(1).numpy() == y[i : i + chunk]).sum())
    return hits / len(P)


def describe(path) -> tuple:
    """(model config, quant config, seq_len, source, input bits) of any model source, without
    calibrating (a float checkpoint: the default preset's, and its input width from its data: 8
    for raw uint8 data, else the preset's ``input_bits``)."""
    from intssm.datapath.modelconfig import ModelConfig
    from intssm.datapath.qspec import PRESETS, QuantConfig

    p = Path(path)
    if p.suffix == ".npz":
        m = export.load(p)
        return m.cfg, m.qcfg, m.seq_len, str(p), m.input.bits
    from intssm.datapath.inputq import from_entry
    from intssm.training import checkpoint

    ck = checkpoint.load_raw(p)
    cfg = ModelConfig.from_dict(dict(ck["model_config"]))
    if "qspec" in ck:
        qs = ck["qspec"]
        return (cfg, QuantConfig.from_dict(dict(qs["quant_config"])), int(qs["seq_len"]), str(p),
                from_entry(qs.get("input"), cfg.d_input).bits)
    ds = ck.get("dataset")
    info = data.info(ds.get("seq", "smnist") if isinstance(ds, dict) else "smnist")
    q = PRESETS[DEFAULT_CONFIG]
    return cfg, q, info.max_len, f"{p} (float; default {DEFAULT_CONFIG})", 8 if info.is_uint8 else q.input_bits
