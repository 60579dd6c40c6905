"""Post-training quantization and quantized checkpoints: float model -> :class:`~intssm.training.qmodel.QuantS4D`.

:func:`ptq` calibrates (:mod:`intssm.training.calibrate`), applies the range policies and builds the
datapath (:func:`intssm.datapath.build.build_datapath`); :func:`qspec_entry` / :func:`from_checkpoint`
store and rebuild it exactly; :func:`requantize_model` rebuilds a model at other formats on its
stored ranges; :func:`run` is ``intssm ptq``: a float checkpoint in, a quantized checkpoint out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from intssm.training.calibrate import calibrate
from intssm.errors import IntssmError
from intssm.training.model import S4DModel
from intssm.training.qmodel import QuantS4D
from intssm.datapath.build import build_datapath, calibrated_range_keys
from intssm.datapath.qspec import DATAPATH_VERSION, QuantConfig
from intssm.datapath.ranges import apply_range_policies, ranges_from_json, ranges_to_json


def ptq(model: S4DModel, qcfg: QuantConfig, calib_u: torch.Tensor, equalize: float = 0.0,
        lengths=None, iq=None) -> tuple[QuantS4D, dict]:
    """Post-training quantization: calibrate ranges on ``calib_u`` (B, L, d) floats (under each
    component's range policy; ``lengths`` (B,) the valid steps, None: all), build the datapath.
    ``equalize`` > 0 first evens the modes' state ranges (:func:`intssm.training.equalize.equalize_states`,
    on the same sequences); the returned model's ``.model`` is then the equalized copy, which
    computes the same float function. ``iq``: the input quantizer ``model`` reads the codes of
    (None: raw uint8 data)."""
    if equalize:
        from intssm.training.equalize import equalize_states

        model, _ = equalize_states(model, calib_u, equalize, lengths)
    cal = calibrate(model, calib_u, want_samples=qcfg.policies() != {"minmax"}, lengths=lengths)
    ranges = cal.ranges
    if cal.samples is not None:
        ranges = apply_range_policies(ranges, cal.samples, qcfg)
    assert set(calibrated_range_keys(model.cfg)) <= set(ranges)
    dp = build_datapath(model.cfg, qcfg, ranges, calib_u.shape[1])
    return QuantS4D(model, dp, iq), ranges


def ptq_dataset(model: S4DModel, qcfg: QuantConfig, ds, equalize: float = 0.0) -> tuple[QuantS4D, dict]:
    """:func:`ptq` on the calibration sequences ``ds`` (:class:`intssm.data.SeqData`). Raw uint8
    data enter as ``p / 255``; float data get an input quantizer calibrated on ``ds``
    (``qcfg.input_bits``, ``qcfg.input_range``) and the model's encoder is folded to read its
    codes (:mod:`intssm.datapath.inputq`)."""
    from intssm.datapath.inputq import calibrate_input, fold_input, model_input

    ds.check_features(model.cfg.d_input)
    iq = None
    if ds.is_uint8:
        u = ds.as_float()
    else:
        iq = calibrate_input(ds.x, ds.lengths, qcfg.input_bits, qcfg.input_range)
        model = fold_input(model, iq)
        u = model_input(iq.codes(ds.x, ds.lengths))
    p0 = next(model.parameters())
    return ptq(model, qcfg, torch.from_numpy(u).to(p0.dtype), equalize, torch.from_numpy(ds.lengths), iq)


def qspec_entry(qm: QuantS4D, ranges: dict) -> dict:
    """What a quantized checkpoint stores to rebuild its datapath exactly."""
    disc = {k: v.detach().clone() for k, v in qm.discrete.items()} if qm.discrete is not None else None
    return {"datapath_version": DATAPATH_VERSION, "discrete": disc, "quant_config": qm.dp.qcfg.to_dict(),
            "ranges": ranges_to_json(ranges), "seq_len": qm.dp.seq_len,
            "input": qm.iq.to_dict()}


def requantize_model(qm: QuantS4D, qcfg: QuantConfig, ranges: dict) -> QuantS4D:
    """The same weights (and learned Abar/Bbar) under new formats ``qcfg``, on the given calibrated
    ``ranges`` (range policies are not re-applied: the ranges are already the clipped ones).
    For lowering bits step by step between QAT runs (progressive quantization)."""
    dp = build_datapath(qm.model.cfg, qcfg, ranges, qm.dp.seq_len)
    out = QuantS4D(qm.model, dp, qm.iq)
    if qm.discrete is not None:
        out.make_discrete({k: v.detach() for k, v in qm.discrete.items()})
    return out


def from_checkpoint(model: S4DModel, ck: dict) -> QuantS4D:
    """Rebuild the :class:`QuantS4D` stored in a quantized checkpoint's ``qspec`` entry."""
    from intssm.datapath.inputq import from_entry

    qs = ck["qspec"]
    if not isinstance(qs, dict) or qs.get("datapath_version") != DATAPATH_VERSION:
        raise IntssmError(f"checkpoint datapath version {qs.get('datapath_version') if isinstance(qs, dict) else None!r} "
                          f"is not the one this intssm implements ({DATAPATH_VERSION})")
    try:
        ranges = ranges_from_json(qs["ranges"])
        qcfg = QuantConfig.from_dict(dict(qs["quant_config"]))
        dp = build_datapath(model.cfg, qcfg, ranges, int(qs["seq_len"]))
    except (KeyError, TypeError, ValueError) as e:
        raise IntssmError(f"checkpoint quantization spec is malformed ({type(e).__name__}: {e})") from None
    try:
        iq = from_entry(qs.get("input"), model.cfg.d_input)
    except IntssmError as e:
        raise IntssmError(f"checkpoint's {e}") from None
    qm = QuantS4D(model, dp, iq)
    disc = qs.get("discrete")
    if disc is not None:
        if not isinstance(disc, dict) or not all(torch.is_tensor(v) and torch.isfinite(v).all() for v in disc.values()):
            raise IntssmError("checkpoint's discrete Abar/Bbar entry is malformed or not finite")
        qm.make_discrete(disc)
    return qm


@dataclass
class PTQOptions:
    """What ``intssm ptq`` takes."""

    ckpt: Path  # the float checkpoint
    out: Path  # the quantized checkpoint written
    config: str = "w8a8"  # preset name (intssm configs) or JSON file
    calib: int = 256  # training sequences calibrating the ranges (the first ones)
    seq: str | None = None  # dataset (None: the checkpoint's)
    equalize: float = 0.0  # state equalization strength alpha in [0, 1] (0: off)


def run(o: PTQOptions, status=None) -> dict:
    """Calibrate ``o.config`` on the first ``o.calib`` training sequences of the checkpoint's dataset
    (:func:`ptq_dataset`) and write the quantized checkpoint ``o.out``: the float checkpoint's entries,
    ``qspec`` (:func:`qspec_entry`) and ``ptq`` (the options). ``status(text)`` is a context manager
    shown while calibrating (None: none). Returns what was done."""
    from contextlib import nullcontext

    from intssm import data
    from intssm.datapath.qspec import get_config
    from intssm.training import checkpoint
    from intssm.training.equalize import check_strength

    if o.calib < 1:
        raise IntssmError(f"--calib must be positive, got {o.calib}")
    qcfg = get_config(o.config)
    check_strength(o.equalize, "--equalize")
    model, ck = checkpoint.load(o.ckpt)
    if "qspec" in ck:
        raise IntssmError(f"{o.ckpt} is already quantized; give the float checkpoint")
    seq = o.seq or checkpoint.dataset_seq(ck)
    cal = data.load(seq, "train", o.calib, checkpoint.val_fraction(ck))
    what = f"calibrating {o.config} on {len(cal)} sequences of {seq}" + (" (with state equalization)" if o.equalize else "")
    with status(what) if status else nullcontext():
        qm, ranges = ptq_dataset(model, qcfg, cal, o.equalize)
    extra = checkpoint.extras(ck)
    extra["qspec"] = qspec_entry(qm, ranges)
    extra["ptq"] = {"config": o.config, "calib": o.calib, "seq": seq, "equalize": o.equalize}
    checkpoint.save(o.out, qm.model.float(), **extra)
    return {"out": str(o.out), "config": o.config, "calib": o.calib, "seq": seq}
