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

from intssm import data
from intssm.training import checkpoint
from intssm.integer import export
from intssm.errors import IntssmError
from intssm.training.qmodel import QuantS4D
from intssm.training.ptq import from_checkpoint, ptq_dataset
from intssm.datapath.qspec import PRESETS
from intssm.integer.sim import simulate

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
    iq: object = None  # intssm.datapath.inputq.InputQuant of a model for float data, else None (raw uint8 inputs)

    def input_codes(self, ds) -> np.ndarray:
        """The uint8 codes the datapath takes for dataset ``ds`` (:func:`intssm.datapath.inputq.input_codes`)."""
        from intssm.datapath.inputq import input_codes

        try:
            return input_codes(self.iq, self.cfg.d_input, ds.x, ds.lengths)
        except IntssmError as e:
            raise IntssmError(f"{ds.name}: {e}") from None

    def description(self) -> dict:
        """What the exporters need besides the arrays: model and quant config, sequence length,
        counter names, input quantizer (the manifest's fields)."""
        from intssm.datapath import layout

        return {"model_config": self.cfg.to_dict(), "quant_config": self.qcfg.to_dict(), "seq_len": self.seq_len,
                "counters": layout.counter_names(self.cfg.n_layers),
                "input": self.iq.to_dict() if self.iq is not None else None}

    def check_data(self, ds) -> None:
        """Refuse data the integer model cannot score: labels beyond its classes, or sequences of
        another length for a mean-pooling model."""
        ds.check_labels(self.cfg.d_output)
        if self.mean_pool and (ds.x.shape[1] != self.seq_len or ds.varlen):
            raise IntssmError(f"model mean-pools over exactly {self.seq_len} steps; {ds.name} has sequences of "
                              f"length {int(ds.lengths.min())}..{int(ds.lengths.max())}")


def load(path, calib: int = 64, config: str = DEFAULT_CONFIG) -> IntegerModel:
    p = Path(path)
    if p.suffix == ".npz":
        from intssm.training.model import ModelConfig
        from intssm.datapath.qspec import QuantConfig

        from intssm.datapath.inputq import InputQuant

        arrays, man = export.load(p)
        iq = InputQuant.from_dict(man["input"]) if man.get("input") is not None else None
        return IntegerModel(arrays, man["counters"], man["model_config"]["pool"] == "mean", man["seq_len"],
                            f"{p} (integer artifact)", ModelConfig.from_dict(man["model_config"]),
                            QuantConfig.from_dict(man["quant_config"]), iq=iq)
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
    arrays = export.integer_model(qm)
    return IntegerModel(arrays, qm.counters, qm.dp.cfg.pool == "mean", qm.dp.seq_len, src, qm.dp.cfg, qm.dp.qcfg,
                        qm, checkpoint.dataset_seq(ck, None), qm.iq)


def run(im: IntegerModel, P: np.ndarray, chunk: int = 1000, progress=None, lengths: np.ndarray | None = None):
    """(logit codes (n, C), saturation counts (n, counters), seconds in the simulator) of input
    codes ``P`` (n, L, d), sequence i run for ``lengths[i]`` steps (None: all L)."""
    out, cnts, t = [], [], 0.0
    for i in range(0, len(P), chunk):
        t0 = time.perf_counter()
        lens = None if lengths is None else lengths[i : i + chunk]
        lg, c, _ = simulate(im.arrays, P[i : i + chunk], im.mean_pool, len(im.counters), lengths=lens)
        t += time.perf_counter() - t0
        out.append(lg)
        cnts.append(c)
        if progress:
            progress(len(lg))
    return np.concatenate(out), np.concatenate(cnts), t


@torch.no_grad()
def torch_logits(qm: QuantS4D, P: np.ndarray, chunk: int = 500, progress=None, lengths: np.ndarray | None = None):
    """Logit codes from the Torch quantized model, as an int64 numpy array."""
    out = []
    for i in range(0, len(P), chunk):
        lens = None if lengths is None else torch.from_numpy(lengths[i : i + chunk])
        lg, _ = qm(torch.from_numpy(P[i : i + chunk]), lengths=lens)
        out.append(lg.numpy().astype(np.int64))
        if progress:
            progress(len(lg))
    return np.concatenate(out)


def describe(path) -> tuple:
    """(model config, quant config, seq_len, source) of any model source, without calibrating."""
    from intssm.training.model import ModelConfig
    from intssm.datapath.qspec import QuantConfig

    p = Path(path)
    if p.suffix == ".npz":
        _, man = export.load(p)
        return ModelConfig.from_dict(man["model_config"]), QuantConfig.from_dict(man["quant_config"]), man["seq_len"], str(p)
    ck = checkpoint.load_raw(p)
    cfg = ModelConfig.from_dict(dict(ck["model_config"]))
    if "qspec" in ck:
        return cfg, QuantConfig.from_dict(dict(ck["qspec"]["quant_config"])), int(ck["qspec"]["seq_len"]), str(p)
    ds = ck.get("dataset")
    L = data.info(ds.get("seq", "smnist") if isinstance(ds, dict) else "smnist").max_len
    return cfg, PRESETS[DEFAULT_CONFIG], L, f"{p} (float; default {DEFAULT_CONFIG})"
