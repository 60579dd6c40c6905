"""The integer model: one validated object that every execution and exporter takes.

An :class:`IntModel` holds the int64 arrays of :mod:`intssm.datapath.layout`, the model and quant
configs, ``seq_len`` and the input quantizer (:mod:`intssm.datapath.inputq`; raw uint8 data have
the identity quantizer :data:`~intssm.datapath.inputq.RAW_UINT8`). It is built in one place only,
:func:`intssm.datapath.layout.validate`, which re-proves the arrays against the configs, whatever
the source (an artifact ``.npz``, a quantized checkpoint, a float checkpoint after PTQ, arrays from
Python): a model that exists has been checked, and nothing downstream checks it again. Calling
``IntModel(...)`` (or :func:`dataclasses.replace`) raises.

The facts derived from the configs have one owner each, here or where named:

* pooling (``mean_pool``) and the counter names: from ``cfg`` and :func:`layout.counter_names`;
* the state's formats (:attr:`IntModel.state_formats`): ``qcfg.x_re`` / ``qcfg.x_im``; the
  ``qrange`` rows are checked equal to them by ``validate``;
* the input's scale and width: the input quantizer (:attr:`IntModel.input`);
* each requantization site's accumulator bound: :func:`intssm.datapath.bounds.site_bound`, run
  by ``validate`` and kept in :attr:`IntModel.site_bounds` (the C export's site widths read it).

The arrays are read-only (``arrays[k].flags.writeable`` is False): a changed array is a new
model, made by ``validate`` again.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np


@dataclass(frozen=True, init=False, eq=False)
class IntModel:
    """A validated integer model (module docstring). Fields: ``arrays`` (name -> read-only int64
    array, :data:`intssm.datapath.layout.NAMES` order), ``cfg`` (ModelConfig), ``qcfg``
    (QuantConfig), ``seq_len`` (the calibration length: the length mean pooling divides by; a
    last-step pooling model runs sequences of any length), ``input`` (the input quantizer),
    ``site_bounds`` (each site's proved accumulator bound)."""

    arrays: MappingProxyType
    cfg: object
    qcfg: object
    seq_len: int
    input: object
    site_bounds: MappingProxyType  # site name (``enc``, ``l0.x_re`` ...) -> its proved largest |accumulator|

    def __init__(self, *args, **kwargs):
        raise TypeError("an IntModel is built by intssm.datapath.layout.validate only")

    @property
    def pool(self) -> str:
        """``mean`` or ``last`` (``model_config.pool``)."""
        return self.cfg.pool

    @property
    def mean_pool(self) -> bool:
        return self.cfg.pool == "mean"

    @property
    def counters(self) -> tuple:
        """Names of the saturation counters, in the order every execution writes them."""
        from intssm.datapath.layout import counter_names

        return tuple(counter_names(self.cfg.n_layers))

    @property
    def n_counters(self) -> int:
        return len(self.counters)

    @property
    def float_input(self) -> bool:
        """True if the model quantizes float data (its input quantizer is not the identity)."""
        return self.input.float_data

    @property
    def state_formats(self) -> tuple:
        """(x_re, x_im) formats of the state (:class:`~intssm.datapath.qspec.QFormat`): the one owner of
        the state's bit widths."""
        return self.qcfg.x_re, self.qcfg.x_im

    def input_codes(self, x: np.ndarray, lengths=None) -> np.ndarray:
        """The uint8 codes the datapath takes for data ``x`` (n, L, d): the input quantizer's
        (:func:`intssm.datapath.inputq.input_codes`)."""
        from intssm.datapath.inputq import input_codes

        return input_codes(self.input, self.cfg.d_input, x, lengths)

    def description(self) -> dict:
        """The manifest's fields besides the arrays: ``model_config``, ``quant_config``,
        ``seq_len``, ``counters``, ``input`` (None for raw uint8 inputs)."""
        return {"model_config": self.cfg.to_dict(), "quant_config": self.qcfg.to_dict(), "seq_len": self.seq_len,
                "counters": list(self.counters), "input": self.input.to_dict()}


def require(m, what: str) -> IntModel:
    """``m`` if it is an IntModel, else TypeError naming ``what`` takes one: loose arrays never
    reach an execution or an exporter unvalidated."""
    if not isinstance(m, IntModel):
        raise TypeError(f"{what} takes an IntModel (intssm.datapath.layout.validate), got {type(m).__name__}")
    return m


def _build(arrays: dict, cfg, qcfg, seq_len: int, input_quant, site_bounds: dict) -> IntModel:
    """The model of arrays already checked by :func:`intssm.datapath.layout.validate` (its only caller)."""
    frozen = {}
    for k, v in arrays.items():
        v = np.ascontiguousarray(v, dtype=np.int64)
        if v.flags.writeable:
            v = v.copy() if v.base is not None else v
            v.flags.writeable = False
        frozen[k] = v
    m = object.__new__(IntModel)
    for k, v in (("arrays", MappingProxyType(frozen)), ("cfg", cfg), ("qcfg", qcfg), ("seq_len", seq_len),
                 ("input", input_quant), ("site_bounds", MappingProxyType(dict(site_bounds)))):
        object.__setattr__(m, k, v)
    return m
