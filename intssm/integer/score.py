"""The integer model's accuracy on labelled input codes: a quantized Torch model's integer arrays run
through the simulator. QAT, ``fit`` and the studies select by it; ``intssm.training`` receives it as
a function (:data:`intssm.training.qat.Score`) and never imports the integer side."""

from __future__ import annotations

import numpy as np

from intssm.integer.export import from_quantized
from intssm.integer.sim import simulate


def int_accuracy(qm, x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None) -> float:
    """Share of sequences whose integer-simulator logits (``qm``'s :class:`~intssm.datapath.intmodel.IntModel`, :func:`from_quantized`) put
    the label ``y`` first, on input codes ``x`` (n, L, d) uint8 of lengths ``lengths`` (None: all L)."""
    lg, _, _ = simulate(from_quantized(qm), x, lengths=lengths)
    return float((lg.argmax(1) == y).mean())
