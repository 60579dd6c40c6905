"""intssm from Python: load any model source, run the integer datapath on arrays, export.

The commands (``intssm simulate``, ``export``, ``export-c``) are thin layers over these same calls::

    import numpy as np
    import intssm

    m = intssm.load("data/checkpoints/japanesevowels-hetero.pt")    # .pt (quantized or float) or .npz artifact
    print(m.model.cfg, m.model.qcfg, m.model.seq_len, m.model.input)  # the validated IntModel
    ds = intssm.load_data("data/uea/JapaneseVowels", "test")          # or your own arrays
    r = intssm.run(m, ds.x, ds.lengths)                               # the simulator's integers
    print((r.pred == ds.y).mean(), r.saturations)
    intssm.export_c(m, "jv_c/")                                       # C99, the same integers

:func:`load` returns an :class:`intssm.sources.LoadedModel`: its ``model`` is the
:class:`intssm.datapath.intmodel.IntModel` (arrays, configs, ``seq_len``, input quantizer; built and
validated once, by :func:`intssm.datapath.layout.validate`), beside the source's description, its
dataset and, if asked for, the Torch quantized model. :func:`run` and :func:`export_c` take either.

Inputs are the data as stored: ``uint8`` arrays are raw codes (a model quantized on uint8 data),
float arrays go through the model's input quantizer (``docs/datapath.md``, *From a data file to
the datapath's input*). Every problem is an :class:`intssm.errors.IntssmError` with a one-line
message, as on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from intssm.errors import IntssmError

__all__ = ["Result", "load", "load_data", "run", "export_c"]


@dataclass(frozen=True)
class Result:
    """What one :func:`run` computed, per sequence: ``logits`` (n, classes) int64 logit codes,
    ``pred`` (n,) their argmax, ``counters`` (n, counters) int64 saturation counts, in the order of
    ``counter_names``."""

    logits: np.ndarray
    pred: np.ndarray
    counters: np.ndarray
    counter_names: tuple

    @property
    def saturations(self) -> dict:
        """Each counter summed over the sequences, by name."""
        return {k: int(v) for k, v in zip(self.counter_names, self.counters.sum(0))}


def load(source, calib: int = 64, config: str = "w8a8", torch_model: bool = False):
    """The integer model of ``source``: an integer artifact (``.npz``), a quantized checkpoint, or a
    float checkpoint (quantized with preset ``config``, ranges calibrated on its first ``calib``
    training sequences). ``torch_model=True`` also builds the Torch quantized model (``.qm``) for
    verification; otherwise a quantized checkpoint may come from the integer-model cache.
    Returns :class:`intssm.sources.LoadedModel` (``.model`` the IntModel)."""
    from intssm import sources

    return sources.load(Path(source), calib=calib, config=config, torch_model=torch_model)


def load_data(seq: str, split: str = "test", limit: int | None = None):
    """A dataset split as :class:`intssm.data.SeqData` (``x`` (n, L, d), ``y``, ``lengths``): ``smnist``,
    ``psmnist``, or a path to ``.ts`` files, an ``.npz`` or IDX files (:func:`intssm.data.load`)."""
    from intssm import data

    return data.load(seq, split, limit)


def _int_model(model):
    """The IntModel of what :func:`load` returned (or an IntModel itself)."""
    from intssm.datapath.intmodel import IntModel

    m = getattr(model, "model", model)
    if not isinstance(m, IntModel):
        raise IntssmError(f"expected a model from intssm.load (or an IntModel), got {type(model).__name__}")
    return m


def run(model, x, lengths=None) -> Result:
    """Run the integer simulator of ``model`` (:func:`load`'s result or an
    :class:`~intssm.datapath.intmodel.IntModel`) on sequences ``x`` (n, L, d) (or (n, L) for one feature), sequence
    ``i`` for ``lengths[i]`` steps (default: all ``L``). Refuses data the model cannot run: another
    number of features, float data for a uint8 model and vice versa, NaN or infinite values, or
    lengths other than ``seq_len`` for a mean-pooling model."""
    from intssm.integer.sim import simulate

    model = _int_model(model)
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or not len(x) or not x.shape[1]:
        raise IntssmError(f"x must be (n, L, d) with n, L >= 1, got shape {x.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise IntssmError(f"x must be uint8 codes or float values, got {x.dtype}")
        if not np.isfinite(x).all():
            raise IntssmError("x contains NaN or infinite values")
        x = x.astype(np.float32)  # every float input is a float32 value (docs/datapath.md)
    L = x.shape[1]
    if lengths is None:
        lengths = np.full(len(x), L, np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (len(x),) or not np.issubdtype(lengths.dtype, np.integer):
        raise IntssmError(f"lengths must be {len(x)} integers, got {lengths.dtype} {lengths.shape}")
    if lengths.min() < 1 or lengths.max() > L:
        raise IntssmError(f"lengths must lie in 1..{L}, got {int(lengths.min())}..{int(lengths.max())}")
    lengths = lengths.astype(np.int64)
    if model.mean_pool and (L != model.seq_len or int(lengths.min()) != L):
        raise IntssmError(f"model mean-pools over exactly {model.seq_len} steps; x has sequences of "
                          f"length {int(lengths.min())}..{int(lengths.max())}")
    P = model.input_codes(x, lengths)
    logits, counters, _ = simulate(model, np.ascontiguousarray(P), lengths=lengths)
    return Result(logits, logits.argmax(1), counters, tuple(model.counters))


def export_c(model, out_dir) -> list:
    """Write ``model`` (:func:`load`'s result or an IntModel) as portable C99 into ``out_dir`` (``intssm export-c``); returns the paths."""
    from intssm.integer.cexport import write_c

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_c(_int_model(model), out)
