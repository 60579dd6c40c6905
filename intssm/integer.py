"""Loading an integer model from any of its sources, and running it over a dataset.

Sources: an exported ``.npz`` (integer arrays only: nothing to verify against), a quantized
checkpoint (``qspec`` entry), or a float checkpoint, which gets the default PTQ (``w8a8``,
ranges calibrated on the first ``calib`` training sequences).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, data, export
from .errors import IntssmError
from .qmodel import QuantS4D, from_checkpoint, ptq
from .qspec import PRESETS
from .sim import simulate

DEFAULT_CONFIG = "w8a8"


@dataclass
class IntegerModel:
    arrays: dict  # int64 arrays in the simulator's layout
    counters: list  # saturation counter names
    mean_pool: bool
    seq_len: int
    source: str
    cfg: object = None  # ModelConfig
    qcfg: object = None  # QuantConfig
    qm: QuantS4D | None = None  # the Torch quantized model, when the source has float weights
    dataset: str | None = None


def load(path, calib: int = 64, config: str = DEFAULT_CONFIG) -> IntegerModel:
    p = Path(path)
    if p.suffix == ".npz":
        from .model import ModelConfig
        from .qspec import QuantConfig

        arrays, man = export.load(p)
        return IntegerModel(arrays, man["counters"], man["model_config"]["pool"] == "mean", man["seq_len"],
                            f"{p} (integer artifact)", ModelConfig.from_dict(man["model_config"]),
                            QuantConfig.from_dict(man["quant_config"]))
    model, ck = checkpoint.load(p)
    model = model.double()
    if "qspec" in ck:
        qm = from_checkpoint(model, ck)
        src = f"{p} (quantized checkpoint)"
    else:
        if config not in PRESETS:
            raise IntssmError(f"unknown quant config {config!r}")
        seq = ck.get("dataset", {}).get("seq", "smnist")
        cal = data.load(seq, "train", calib)
        qm, _ = ptq(model, PRESETS[config], torch.from_numpy(cal.as_float()))
        src = f"{p} (float checkpoint, default PTQ {config} calibrated on {calib} training sequences)"
    arrays = export.integer_model(qm)
    return IntegerModel(arrays, qm.dp.counters, qm.dp.cfg.pool == "mean", qm.dp.seq_len, src, qm.dp.cfg, qm.dp.qcfg,
                        qm, ck.get("dataset", {}).get("seq"))


def run(im: IntegerModel, P: np.ndarray, chunk: int = 1000, progress=None):
    """(logit codes (n, C), saturation counts (n, counters), seconds in the simulator)."""
    out, cnts, t = [], [], 0.0
    for i in range(0, len(P), chunk):
        t0 = time.perf_counter()
        lg, c, _ = simulate(im.arrays, P[i : i + chunk], im.mean_pool, len(im.counters))
        t += time.perf_counter() - t0
        out.append(lg)
        cnts.append(c)
        if progress:
            progress(len(lg))
    return np.concatenate(out), np.concatenate(cnts), t


@torch.no_grad()
def torch_logits(qm: QuantS4D, P: np.ndarray, chunk: int = 500, progress=None):
    """Logit codes from the Torch quantized model, as an int64 numpy array."""
    out = []
    for i in range(0, len(P), chunk):
        lg, _ = qm(torch.from_numpy(P[i : i + chunk]))
        out.append(lg.numpy().astype(np.int64))
        if progress:
            progress(len(lg))
    return np.concatenate(out)


def describe(path) -> tuple:
    """(model config, quant config, seq_len, source) of any model source, without calibrating."""
    from .model import ModelConfig
    from .qspec import QuantConfig

    p = Path(path)
    if p.suffix == ".npz":
        _, man = export.load(p)
        return ModelConfig.from_dict(man["model_config"]), QuantConfig.from_dict(man["quant_config"]), man["seq_len"], str(p)
    ck = checkpoint.load_raw(p)
    cfg = ModelConfig.from_dict(dict(ck["model_config"]))
    if "qspec" in ck:
        return cfg, QuantConfig.from_dict(dict(ck["qspec"]["quant_config"])), int(ck["qspec"]["seq_len"]), str(p)
    return cfg, PRESETS[DEFAULT_CONFIG], 784, f"{p} (float; default {DEFAULT_CONFIG})"
