"""The quantized model QAT starts from: how far it is from the float model, and a start whose
activation ranges are chosen on the calibration sequences.

On long sequences with rare large values (ACSF1: 1,460 steps, bursts of 12 standard deviations
over an idle level within ±1.8) min/max calibration lets the bursts set the scale of every
activation site after the input (``h``, ``y``, ``glu``): at 6 bits the ordinary steps then fall on a
handful of codes, and the integer model starts QAT tens of times the float model's loss away; the
straight-through gradients of such a start do not bring it back (``tools/qat_long_study.py``,
docs/results.md, *QAT on long sequences with rare large values*).

:func:`start_quality` measures a start against its float model on labelled sequences (Torch's
integer forward pass: the same integers as the simulator); :func:`calibrated_start` builds the
start under each activation range policy of :data:`ACT_POLICIES` and keeps the one of least integer
cross-entropy on the calibration sequences (training data only: never validation or test).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from intssm.datapath.inputq import model_input
from intssm.datapath.layout import COLLAPSE_WARN, STATE_SATURATION_WARN
from intssm.datapath.qspec import QuantConfig
from intssm.training.qmodel import QuantS4D

#: the activation sites whose calibrated range a rare large input sets
ACT_SITES = ("h", "y", "glu")
#: range policies :func:`calibrated_start` tries on ACT_SITES (the config's own first; a tie keeps it)
ACT_POLICIES = ("p99.99", "p99.9", "mse")
#: the input range :func:`calibrated_start` also tries for float data (a rare burst clipped to the 99.9th percentile)
INPUT_POLICY = "p99.9"
#: a start is "far" from its float model when its integer cross-entropy on the calibration
#: sequences exceeds the float model's by this much (nats): the warning of :func:`far_words`
FAR_LOSS = 1.0
CHECK_SEQUENCES = 64  # training sequences the QAT start and end are checked on (intssm.training.qat.run)
DEAD_ZONE_SHARE = 0.1  # a mode is "slow" when its round-to-nearest dead zone exceeds this share of the state's range


@torch.no_grad()
def start_quality(qm: QuantS4D, ds, batch: int = 64) -> dict:
    """The integer model ``qm`` against its float model (``qm.model``, which reads the input codes
    as ``p / 255``) on labelled sequences ``ds`` (:class:`intssm.data.SeqData`):

    ``float_loss``, ``float_acc``, ``int_loss``, ``int_acc`` (mean cross-entropy and accuracy),
    ``saturations`` (site -> clipped values), ``state_saturation`` (clipped state updates / all),
    ``dead_zone_share``: the share of modes whose round-to-nearest dead zone 0.5 / (1 - |Abar_q|)
    codes is over :data:`DEAD_ZONE_SHARE` of the state's range (such a mode stops decaying well
    inside its range and integrates its input instead)."""
    from intssm.datapath import layout

    P = qm.input_codes(ds.x, ds.lengths)
    y = torch.from_numpy(np.asarray(ds.y)).long()
    lens = torch.from_numpy(np.asarray(ds.lengths)).long()
    fl, il, sat = [], [], {n: 0 for n in qm.counters}
    model, was_training = qm.model, qm.model.training
    model.eval()  # no dropout in the float reference; the mode is restored below
    for i in range(0, len(P), batch):
        p = torch.from_numpy(P[i:i + batch])
        li = lens[i:i + batch]
        fl.append(model(torch.from_numpy(model_input(P[i:i + batch])).to(next(model.parameters()).dtype), lengths=li).double())
        codes, cnt = qm(p, counts=True, lengths=li)
        il.append(qm.real_logits(codes))
        for k, v in cnt.items():
            sat[k] += v
    model.train(was_training)
    fl, il = torch.cat(fl), torch.cat(il)
    events = layout.counter_events(qm.dp.cfg, int(lens.sum()), len(P))
    state = sum(v for k, v in sat.items() if k.split(".")[-1] in ("x_re", "x_im"))
    n_state = sum(v for k, v in events.items() if k.split(".")[-1] in ("x_re", "x_im"))
    return {"float_loss": F.cross_entropy(fl, y).item(), "float_acc": float((fl.argmax(1) == y).double().mean()),
            "int_loss": F.cross_entropy(il, y).item(), "int_acc": float((il.argmax(1) == y).double().mean()),
            "saturations": {k: v for k, v in sat.items() if v}, "state_saturation": state / max(1, n_state),
            "dead_zone_share": dead_zone_share(qm)}


@torch.no_grad()
def dead_zone_share(qm: QuantS4D) -> float:
    """Share of all modes whose dead zone 0.5 / (1 - |Abar_q|) (in state codes, round to nearest)
    exceeds :data:`DEAD_ZONE_SHARE` of the state's largest code: inside it, Abar_q x rounds back to x."""
    W = qm.weight_codes()
    tq, qc = qm.dp.tq, qm.dp.qcfg
    qmax = qc.x_re.qmax
    slow = total = 0
    for i in range(qm.dp.cfg.n_layers):
        p = f"l{i}."
        re = np.asarray(tq[p + "A_re"].scale)[:, None] * (W["A_re"][i].numpy() - np.asarray(tq[p + "A_re"].zero)[:, None])
        im = np.asarray(tq[p + "A_im"].scale)[:, None] * (W["A_im"][i].numpy() - np.asarray(tq[p + "A_im"].zero)[:, None])
        gap = np.maximum(1.0 - np.hypot(re, im), 1e-12)
        slow += int((0.5 / gap > DEAD_ZONE_SHARE * qmax).sum())
        total += gap.size
    return slow / total


def far_words(q: dict) -> str | None:
    """A warning when start ``q`` (:func:`start_quality`) is far from its float model, else None."""
    why = []
    if q["int_loss"] > q["float_loss"] + FAR_LOSS:
        why.append(f"its cross-entropy on the sequences checked (the first training sequences) is {q['int_loss']:.2f} against the float model's "
                   f"{q['float_loss']:.2f} (accuracy {100 * q['int_acc']:.1f}% against {100 * q['float_acc']:.1f}%)")
    if q["state_saturation"] > STATE_SATURATION_WARN:
        why.append(f"the state saturates on {100 * q['state_saturation']:.2f}% of its updates")
    if not why:
        return None
    return ("the quantized start is far from the float model: " + "; ".join(why)
            + ". QAT rarely recovers from such a start: try --ranges calibrated (activation ranges chosen on the "
              "training sequences), more state bits, or --equalize 1")


def end_words(start: dict, end: dict) -> str | None:
    """A warning when the model QAT kept (``end``, :func:`start_quality` on the same sequences as
    ``start``) scores more than :data:`COLLAPSE_WARN` below the float model QAT started from, or its
    state saturates on more than :data:`STATE_SATURATION_WARN` of the updates; else None."""
    why = []
    if end["int_acc"] < start["float_acc"] - COLLAPSE_WARN:
        why.append(f"it scores {100 * end['int_acc']:.1f}% on the first training sequences, against the float "
                   f"model's {100 * start['float_acc']:.1f}%")
    if end["state_saturation"] > STATE_SATURATION_WARN:
        why.append(f"its state saturates on {100 * end['state_saturation']:.2f}% of the updates")
    if not why:
        return None
    return ("the integer model QAT kept is not what the float model was: " + "; ".join(why)
            + ". Try --ranges calibrated, more state bits (a larger preset) or more epochs; `intssm simulate` counts the saturations")


def calibrated_start(model, qcfg: QuantConfig, ds, ptq_fn=None) -> tuple[QuantS4D, dict, str, list]:
    """PTQ of float ``model`` at ``qcfg`` on calibration sequences ``ds`` under the config's own
    range policies and each of :data:`ACT_POLICIES` on :data:`ACT_SITES`, with the config's input
    range and, for float data, :data:`INPUT_POLICY`; returns the start of least integer
    cross-entropy on ``ds`` (a tie keeps the earlier, the config's own first), its ranges, the
    choice in words and every candidate's {"input", "activations", "int_loss", "int_acc"}. Only the
    calibration (training) sequences are read."""
    if ptq_fn is None:
        from intssm.training.ptq import ptq_dataset as ptq_fn
    own = getattr(qcfg, ACT_SITES[0]).range
    acts = [own] + [p for p in ACT_POLICIES if p != own]
    ins = [qcfg.input_range] + ([INPUT_POLICY] if not ds.is_uint8 and qcfg.input_range != INPUT_POLICY else [])
    best, tried = None, []
    for ip in ins:
        for ap in acts:
            q = replace(qcfg, input_range=ip, **{n: replace(getattr(qcfg, n), range=ap) for n in ACT_SITES})
            qm, ranges = ptq_fn(model, q, ds)
            s = start_quality(qm, ds)
            tried.append({"input": ip, "activations": ap, "int_loss": s["int_loss"], "int_acc": s["int_acc"]})
            if best is None or s["int_loss"] < best[0]:
                best = (s["int_loss"], qm, ranges, f"input {ip}, activations {ap}")
    return best[1], best[2], best[3], tried
