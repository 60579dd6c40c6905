"""The integer model's layout: every array it consists of, its code-range rows and its counters.

One owner for what the integer artifact holds. The datapath's description (:mod:`intssm.datapath.qspec`:
formats, sites, bound proofs) is turned into these arrays by :func:`from_datapath` (constants)
and the quantized model's weight codes; the executions (:mod:`intssm.integer.sim`, the reference in
``tests/naive_sim.py``) and the exporters (:mod:`intssm.integer.export`, :mod:`intssm.integer.cexport`) read
names, shapes, rows and counter indices from here, and :func:`validate` re-proves a model from
any source before it runs. ``docs/datapath.md`` (section *Artifact*) is checked against
:func:`describe` by a test.

Shapes are written in the symbols of docs/datapath.md: ``L`` layers, ``H`` channels, ``N2``
complex modes per channel, ``D_IN`` input features, ``D_OUT`` classes, ``Y_CODES`` = 2**y.bits,
``GLU_CODES`` = 2**glu.bits. Per-layer arrays are stacked on axis 0.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import numpy as np

from intssm.errors import IntssmError
from intssm.datapath.fixedpoint import MAX_SHIFT, MULT_BITS

#: Rows of ``qrange`` ([qmin, qmax] of each activation format), in order.
QRANGE_ROWS = ("h", "x_re", "x_im", "y", "act", "glu", "sig", "pool", "logits")
# the same rows as constants, for the Numba kernels
R_H, R_XRE, R_XIM, R_Y, R_ACT, R_GLU, R_SIG, R_POOL, R_LOGITS = range(len(QRANGE_ROWS))

#: Saturation counters of one layer, in order; the model's counters are ``h0`` (the encoder), then
#: these for each layer (``l{i}.x_re`` ...), then ``pool`` and ``logits``. A counter counts the
#: elements its site clamped to the code range, summed over steps.
LAYER_COUNTERS = ("x_re", "x_im", "y", "glu", "h")
C_XRE, C_XIM, C_Y, C_GLU, C_H = range(len(LAYER_COUNTERS))
C_POOL, C_LOGITS = 0, 1  # after head_base


def counter_names(n_layers: int) -> list[str]:
    """Names of the saturation counters, in the order every execution writes them."""
    names = ["h0"]
    for i in range(n_layers):
        names += [f"l{i}.{s}" for s in LAYER_COUNTERS]
    return names + ["pool", "logits"]


def counter_events(cfg, steps: int, sequences: int) -> dict:
    """How many elements each counter's site produced over ``steps`` time steps of ``sequences``
    sequences: the denominator of a saturation rate (a counter counts clamped elements)."""
    H, N2 = cfg.d_model, cfg.d_state // 2
    per_step = {"x_re": H * N2, "x_im": H * N2, "y": H, "glu": 2 * H, "h": H}
    out = {"h0": H * steps}
    for i in range(cfg.n_layers):
        out |= {f"l{i}.{k}": per_step[k] * steps for k in LAYER_COUNTERS}
    return out | {"pool": H * sequences, "logits": cfg.d_output * sequences}


COLLAPSE_WARN = 0.05  # integer accuracy this far below the float model's on the same sequences: a collapse
STATE_SATURATION_WARN = 1e-3  # share of state updates clipped above which the integer state is not the float one's


def state_saturation_words(cfg, counts: dict, steps: int, sequences: int) -> list[str]:
    """One warning per state site (``l{i}.x_re``, ``l{i}.x_im``) that ``counts`` (counter -> clipped
    values over ``steps`` time steps of ``sequences`` sequences) shows clipped on more than
    :data:`STATE_SATURATION_WARN` of its updates: the float model's state is then not reproduced."""
    events = counter_events(cfg, steps, sequences)
    out = []
    for k, v in counts.items():
        if k.split(".")[-1] in ("x_re", "x_im") and v / events[k] > STATE_SATURATION_WARN:
            out.append(f"state {k} saturates on {100 * v / events[k]:.2f}% of its updates (the float model's state is not reproduced)")
    return out


def n_counters(n_layers: int) -> int:
    return head_base(n_layers) + 2


N_LAYER_COUNTERS = len(LAYER_COUNTERS)


def layer_base(i):
    """Index of layer ``i``'s first counter (``l{i}.x_re``); add ``C_XRE`` ... ``C_H``.
    Plain arithmetic: the Numba kernels compile it too."""
    return 1 + N_LAYER_COUNTERS * i


def head_base(n_layers):
    """Index of the ``pool`` counter; ``logits`` follows it (``C_POOL``, ``C_LOGITS``)."""
    return 1 + N_LAYER_COUNTERS * n_layers


@dataclass(frozen=True)
class Array:
    """One array of the integer model.

    ``role``: ``code`` (weight codes of format ``fmt``), ``zero`` (zero points of format ``fmt``:
    0 for a symmetric format), ``bias`` (signed, ``bias_bits`` wide), ``multiplier``
    (``[0, 2**MULT_BITS)``), ``shift`` (``[0, MAX_SHIFT]``), ``lut`` (entries are codes of
    ``fmt``), ``qrange`` or ``flag``. ``site``: the requantization site a multiplier or shift
    belongs to (docs/datapath.md)."""

    name: str
    shape: tuple  # symbols of docs/datapath.md, or integers
    role: str
    fmt: str | None = None
    site: str | None = None
    doc: str = ""


#: Every array, in the order the simulator's kernels take them.
ARRAYS = (
    Array("enc_w", ("H", "D_IN"), "code", "enc_w", doc="encoder weight codes, row h, input feature j"),
    Array("enc_w_z", ("H",), "zero", "enc_w", doc="encoder weight zero point per row"),
    Array("enc_b", ("H",), "bias", doc="encoder bias at the accumulator's scale"),
    Array("enc_M", ("H",), "multiplier", site="enc", doc="encoder site multiplier per output channel"),
    Array("enc_S", ("H",), "shift", site="enc", doc="encoder site shift per output channel"),
    Array("h_z", ("L+1",), "zero", "h", doc="zero point of h_0 (encoder output), then of each layer's output"),
    Array("A_re", ("L", "H", "N2"), "code", "A_re", doc="Re Abar codes"),
    Array("A_im", ("L", "H", "N2"), "code", "A_im", doc="Im Abar codes"),
    Array("A_re_z", ("L", "H"), "zero", "A_re", doc="Re Abar zero point per channel"),
    Array("A_im_z", ("L", "H"), "zero", "A_im", doc="Im Abar zero point per channel"),
    Array("B_re", ("L", "H", "N2"), "code", "B", doc="Re Bbar codes"),
    Array("B_im", ("L", "H", "N2"), "code", "B", doc="Im Bbar codes"),
    Array("B_z", ("L", "H"), "zero", "B", doc="Bbar zero point per channel (Re and Im share it)"),
    Array("C_re", ("L", "H", "N2"), "code", "C", doc="Re C codes"),
    Array("C_im", ("L", "H", "N2"), "code", "C", doc="Im C codes"),
    Array("C_z", ("L", "H"), "zero", "C", doc="C zero point per channel (Re and Im share it)"),
    Array("D", ("L", "H"), "code", "D", doc="skip weight codes"),
    Array("D_z", ("L", "H"), "zero", "D", doc="skip weight zero point"),
    Array("x_re_z", ("L", "H"), "zero", "x_re", doc="Re state zero point per channel (the state starts there)"),
    Array("x_im_z", ("L", "H"), "zero", "x_im", doc="Im state zero point per channel"),
    Array("x_re_M", ("L", 3, "H"), "multiplier", site="x_re",
          doc="Re state update multipliers: terms (Are x_re, Aim x_im, Bre u)"),
    Array("x_re_S", ("L", "H"), "shift", site="x_re", doc="Re state update shift"),
    Array("x_im_M", ("L", 3, "H"), "multiplier", site="x_im",
          doc="Im state update multipliers: terms (Are x_im, Aim x_re, Bim u)"),
    Array("x_im_S", ("L", "H"), "shift", site="x_im", doc="Im state update shift"),
    Array("y_M", ("L", 3, "H"), "multiplier", site="y",
          doc="output multipliers: terms (sum Cre x_re, sum Cim x_im, D u), the 2 of 2 Re(Cx) folded in"),
    Array("y_S", ("L", "H"), "shift", site="y", doc="output shift"),
    Array("y_z", ("L",), "zero", "y", doc="output zero point"),
    Array("gelu_lut", ("L", "Y_CODES"), "lut", "act", doc="GELU table, indexed by y - qmin(y)"),
    Array("act_z", ("L",), "zero", "act", doc="activation zero point"),
    Array("mix_w", ("L", "2H", "H"), "code", "mix_w", doc="GLU mixing weight codes, row j, input h"),
    Array("mix_w_z", ("L", "2H"), "zero", "mix_w", doc="mixing weight zero point per row"),
    Array("mix_b", ("L", "2H"), "bias", doc="mixing bias at the accumulator's scale"),
    Array("glu_M", ("L", "2H"), "multiplier", site="glu", doc="mixing site multiplier per row"),
    Array("glu_S", ("L", "2H"), "shift", site="glu", doc="mixing site shift per row"),
    Array("glu_z", ("L",), "zero", "glu", doc="mixing output zero point (both halves)"),
    Array("sig_lut", ("L", "GLU_CODES"), "lut", "sig", doc="sigmoid table, indexed by g - qmin(glu)"),
    Array("h_M", ("L", 2, "H"), "multiplier", site="h", doc="residual multipliers: terms (h, g_a sigma(g_b))"),
    Array("h_S", ("L", "H"), "shift", site="h", doc="residual shift"),
    Array("pool_M", ("H",), "multiplier", site="pool", doc="pooling multiplier (1/L of mean pooling folded in)"),
    Array("pool_S", ("H",), "shift", site="pool", doc="pooling shift"),
    Array("pool_z", (1,), "zero", "pool", doc="pooled feature zero point"),
    Array("dec_w", ("D_OUT", "H"), "code", "dec_w", doc="decoder weight codes, row o, input h"),
    Array("dec_w_z", ("D_OUT",), "zero", "dec_w", doc="decoder weight zero point per row"),
    Array("dec_b", ("D_OUT",), "bias", doc="decoder bias at the accumulator's scale"),
    Array("logits_M", ("D_OUT",), "multiplier", site="logits", doc="decoder site multiplier per class"),
    Array("logits_S", ("D_OUT",), "shift", site="logits", doc="decoder site shift per class"),
    Array("logits_z", (1,), "zero", "logits", doc="logit zero point"),
    Array("qrange", (len(QRANGE_ROWS), 2), "qrange", doc="[qmin, qmax] of " + ", ".join(QRANGE_ROWS)),
    Array("x_dither", (1,), "flag", doc="1: the state update rounds with the Weyl dither, 0: half up"),
)
SPEC = {a.name: a for a in ARRAYS}
NAMES = tuple(a.name for a in ARRAYS)
#: The weight codes and biases (from the quantized model's weights; the rest are datapath constants).
WEIGHT_NAMES = tuple(a.name for a in ARRAYS if a.role in ("code", "bias"))

#: The arrays as one named bundle, the simulator kernels' single argument.
IntArrays = namedtuple("IntArrays", NAMES)

#: Requantization sites: (site kind, its multiplier and shift arrays, per layer?).
SITES = (("enc", "enc_M", "enc_S", False), ("x_re", "x_re_M", "x_re_S", True), ("x_im", "x_im_M", "x_im_S", True),
         ("y", "y_M", "y_S", True), ("glu", "glu_M", "glu_S", True), ("h", "h_M", "h_S", True),
         ("pool", "pool_M", "pool_S", False), ("logits", "logits_M", "logits_S", False))

#: Longest sequence a model may be quantized for (mean pooling's bound and the C example's buffer
#: grow with it).
MAX_SEQ_LEN = 2**20


def dims(cfg, qcfg) -> dict:
    """Values of the shape symbols for a model and quant config (``qcfg`` None: the table lengths
    stay unknown)."""
    H, nl = cfg.d_model, cfg.n_layers
    d = {"L": nl, "L+1": nl + 1, "H": H, "2H": 2 * H, "N2": cfg.d_state // 2, "D_IN": cfg.d_input,
         "D_OUT": cfg.d_output}
    if qcfg is not None:
        d |= {"Y_CODES": 2**qcfg.y.bits, "GLU_CODES": 2**qcfg.glu.bits}
    return d


def expected_shapes(cfg, qcfg) -> dict:
    """name -> shape of every array, for a model and quant config (``qcfg`` None: the lookup tables
    are left out)."""
    d = dims(cfg, qcfg)
    return {a.name: tuple(s if isinstance(s, int) else d[s] for s in a.shape) for a in ARRAYS
            if all(isinstance(s, int) or s in d for s in a.shape)}


def qrange_of(qcfg) -> np.ndarray:
    """(9, 2) [qmin, qmax] rows of :data:`QRANGE_ROWS` for a quant config."""
    return np.array([[getattr(qcfg, n).qmin, getattr(qcfg, n).qmax] for n in QRANGE_ROWS], dtype=np.int64)


def from_datapath(dp) -> dict:
    """The datapath constants of a :class:`~intssm.datapath.build.Datapath` (everything except the weight
    codes and biases) as int64 arrays under their names here."""
    nl = dp.cfg.n_layers
    tq, S, L = dp.tq, dp.sites, range(nl)
    st = lambda f: np.stack([f(i) for i in L])  # noqa: E731
    q = dp.qcfg
    a = {
        "enc_w_z": tq["enc_w"].zero, "enc_M": S["enc"][0][0], "enc_S": S["enc"][1],
        "h_z": np.array([tq["h0"].zero[0]] + [tq[f"l{i}.h"].zero[0] for i in L]),
        "A_re_z": st(lambda i: tq[f"l{i}.A_re"].zero), "A_im_z": st(lambda i: tq[f"l{i}.A_im"].zero),
        "B_z": st(lambda i: tq[f"l{i}.B"].zero), "C_z": st(lambda i: tq[f"l{i}.C"].zero),
        "D_z": st(lambda i: tq[f"l{i}.D"].zero),
        "x_re_z": st(lambda i: tq[f"l{i}.x_re"].zero), "x_im_z": st(lambda i: tq[f"l{i}.x_im"].zero),
        "x_re_M": st(lambda i: S[f"l{i}.x_re"][0]), "x_re_S": st(lambda i: S[f"l{i}.x_re"][1]),
        "x_im_M": st(lambda i: S[f"l{i}.x_im"][0]), "x_im_S": st(lambda i: S[f"l{i}.x_im"][1]),
        "y_M": st(lambda i: S[f"l{i}.y"][0]), "y_S": st(lambda i: S[f"l{i}.y"][1]),
        "y_z": np.array([tq[f"l{i}.y"].zero[0] for i in L]),
        "gelu_lut": st(lambda i: dp.luts[f"l{i}.gelu"]),
        "act_z": np.array([tq[f"l{i}.act"].zero[0] for i in L]),
        "mix_w_z": st(lambda i: tq[f"l{i}.mix_w"].zero),
        "glu_M": st(lambda i: S[f"l{i}.glu"][0][0]), "glu_S": st(lambda i: S[f"l{i}.glu"][1]),
        "glu_z": np.array([tq[f"l{i}.glu"].zero[0] for i in L]),
        "sig_lut": st(lambda i: dp.luts[f"l{i}.sig"]),
        "h_M": st(lambda i: S[f"l{i}.h"][0]), "h_S": st(lambda i: S[f"l{i}.h"][1]),
        "pool_M": S["pool"][0][0], "pool_S": S["pool"][1], "pool_z": tq["pool"].zero[:1],
        "dec_w_z": tq["dec_w"].zero,
        "logits_M": S["logits"][0][0], "logits_S": S["logits"][1], "logits_z": tq["logits"].zero[:1],
        "x_dither": np.array([int(q.state_rounding == "dither")]),
        "qrange": qrange_of(q),
    }
    return {k: np.ascontiguousarray(np.asarray(v, dtype=np.int64)) for k, v in a.items()}


def bundle(arrays) -> IntArrays:
    """The arrays (a dict, or an IntModel's read-only ones) as writable contiguous int64 copies, in
    one :data:`IntArrays` bundle: what the Numba kernels take."""
    return IntArrays(*(np.array(arrays[k], dtype=np.int64, order="C") for k in NAMES))


def site_arrays(a: dict, kind: str, layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(M (terms, channels), S (channels,)) of one site, as :func:`intssm.datapath.bounds.site_bound` takes them."""
    for k, m, s, per_layer in SITES:
        if k == kind:
            M, S = (a[m][layer], a[s][layer]) if per_layer else (a[m], a[s])
            return (M if M.ndim == 2 else M[None, :]), S
    raise KeyError(kind)


def validate(raw: dict, cfg, qcfg, seq_len: int, input_quant=None):
    """Check that ``raw`` (name -> integer array, from any source) is one model of ``cfg`` /
    ``qcfg`` that the datapath's proof covers, and return it as the
    :class:`~intssm.datapath.intmodel.IntModel` (the only way one is made). ``input_quant``: the
    model's input quantizer (:mod:`intssm.datapath.inputq`; None: raw uint8 inputs,
    :data:`~intssm.datapath.inputq.RAW_UINT8`), checked against ``d_input``.

    Checked: every name present and no other; integer dtypes; shapes; every weight code, zero
    point, bias, lookup-table entry, multiplier and shift within its declared width and range
    (zero points of symmetric formats are 0); ``qrange`` and ``x_dither`` equal to the quant
    config's; and, site by site with the model's own multipliers and shifts, the bound proof of
    :func:`intssm.datapath.build.build_datapath`: no accumulator can reach 2**53 (and the dithered
    state rounding's shifts are <= 32). Raises IntssmError."""
    from intssm.datapath.bounds import site_bound, site_term_bounds
    from intssm.datapath.inputq import RAW_UINT8
    from intssm.datapath.intmodel import _build

    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or not 1 <= seq_len <= MAX_SEQ_LEN:
        raise IntssmError(f"seq_len must be an integer in 1..{MAX_SEQ_LEN}, got {seq_len!r}")
    shapes = expected_shapes(cfg, qcfg)
    missing = [k for k in NAMES if k not in raw]
    if missing:
        raise IntssmError(f"missing arrays {missing[:5]}")
    extra = sorted(set(raw) - set(NAMES))
    if extra:
        raise IntssmError(f"unexpected arrays {extra[:5]}")
    a = {}
    for k in NAMES:
        v = np.asarray(raw[k])
        if not np.issubdtype(v.dtype, np.integer):
            raise IntssmError(f"array {k} has dtype {v.dtype}, expected an integer type")
        if v.shape != shapes[k]:
            raise IntssmError(f"array {k} has shape {v.shape}, expected {shapes[k]}")
        if v.size and v.dtype == np.uint64 and int(v.max()) > np.iinfo(np.int64).max:
            raise IntssmError(f"array {k} holds values >= 2**63")
        a[k] = np.ascontiguousarray(v.astype(np.int64))

    def within(k, lo, hi, what):
        v = a[k]
        if v.size and (int(v.min()) < lo or int(v.max()) > hi):
            raise IntssmError(f"{k}: {what} outside [{lo}, {hi}] (found {int(v.min())}..{int(v.max())})")

    bias_hi = qcfg.bias_bound - 1
    for s in ARRAYS:
        if s.role in ("code", "lut"):
            f = getattr(qcfg, s.fmt)
            within(s.name, f.qmin, f.qmax, f"codes of the {f.bits}-bit format {s.fmt}")
        elif s.role == "zero":
            f = getattr(qcfg, s.fmt)
            if f.symmetric:
                within(s.name, 0, 0, f"zero point of the symmetric format {s.fmt}")
            else:
                within(s.name, f.qmin, f.qmax, f"zero point of the {f.bits}-bit format {s.fmt}")
        elif s.role == "bias":
            within(s.name, -qcfg.bias_bound, bias_hi, f"{qcfg.bias_bits}-bit bias")
        elif s.role == "multiplier":
            within(s.name, 0, 2**MULT_BITS - 1, f"{MULT_BITS}-bit multiplier")
        elif s.role == "shift":
            within(s.name, 0, MAX_SHIFT, "shift")
    if not np.array_equal(a["qrange"], qrange_of(qcfg)):
        raise IntssmError("code ranges disagree with the quant config (qrange)")
    dither = qcfg.state_rounding == "dither"
    if int(a["x_dither"][0]) != int(dither):
        raise IntssmError(f"x_dither {int(a['x_dither'][0])} disagrees with state_rounding {qcfg.state_rounding!r}")
    T = site_term_bounds(cfg, qcfg, seq_len)
    proved = {}
    for kind, _, _, per_layer in SITES:
        for i in (range(cfg.n_layers) if per_layer else [None]):
            M, S = site_arrays(a, kind, i)
            name = kind if i is None else f"l{i}.{kind}"
            terms, bias = T[kind]
            proved[name] = site_bound(name, terms, bias, M, S, dither and kind in ("x_re", "x_im"))
    iq = RAW_UINT8 if input_quant is None else input_quant
    if iq.float_data and len(iq.lo) != cfg.d_input:
        raise IntssmError(f"the input quantizer has {len(iq.lo)} channels, the model {cfg.d_input} (d_input)")
    return _build(a, cfg, qcfg, seq_len, iq, proved)


def describe() -> list[dict]:
    """The layout as records (name, shape, role, format, site, meaning): what docs/datapath.md's
    *Artifact* section tabulates."""
    return [{"name": a.name, "shape": "(" + ", ".join(str(s) for s in a.shape) + ")", "role": a.role,
             "fmt": a.fmt, "site": a.site, "doc": a.doc} for a in ARRAYS]

