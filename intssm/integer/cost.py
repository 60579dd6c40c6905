"""What the integer model costs: exact memory (bits of every stored tensor) and per-step operations.

Both are derived from the datapath description (:class:`~intssm.datapath.qspec.QuantConfig` and the model
shapes), the same one the simulator runs; ``tests/naive_sim.py`` counts the operations again while
simulating, and the tests demand equality.

Operation kinds (per recurrent step unless said otherwise):
  ``mul AxB``   multiplication of an A-bit by a B-bit operand (centred operands: asymmetric
                b-bit codes minus their zero point are b+1-bit signed values)
  ``mac``       multiply-accumulate into an accumulator (counted as its multiplication and an ``add``)
  ``mul rq``    multiplication of an accumulator by a 15-bit requantization multiplier
  ``add``       additions/subtractions, by accumulator width
  ``shift``     rounding right shifts;  ``clamp``: saturations;  ``lut``: table reads
"""

from __future__ import annotations

import math
from collections import Counter

from intssm.datapath import layout
from intssm.datapath.fixedpoint import MULT_BITS
from intssm.datapath.modelconfig import ModelConfig
from intssm.datapath.bounds import site_term_bounds
from intssm.datapath.qspec import QuantConfig

MULT_STORE_BITS = MULT_BITS + 1  # a requantization multiplier (MULT_BITS-bit unsigned) stored in a 16-bit word
SHIFT_BITS = 8  # stored width of a shift (0..MAX_SHIFT)


def site_counts(cfg: ModelConfig) -> list[tuple[str, int, int]]:
    """(site, terms per output, outputs) over the whole model, from the layout's multiplier and shift shapes."""
    shapes = layout.expected_shapes(cfg, None)
    out = []
    for kind, m, s, _ in layout.SITES:
        outputs = math.prod(shapes[s])
        out.append((kind, math.prod(shapes[m]) // outputs, outputs))
    return out


def memory(cfg: ModelConfig, q: QuantConfig, seq_len: int = 784) -> dict:
    """Bits of every stored integer tensor, metadata, LUT, state and buffer, and the float32 twin.

    Flash = constants (weights, biases, multipliers, shifts, zero points, LUTs);
    RAM = what changes while running (state, activation buffers, pooling accumulator).
    """
    H, N2, nl, d, C = cfg.d_model, cfg.d_state // 2, cfg.n_layers, cfg.d_input, cfg.d_output
    rows = []  # (name, kind, count, bits_each)

    def add(name, kind, count, bits):
        rows.append({"name": name, "kind": kind, "count": int(count), "bits_each": int(bits), "bits": int(count) * int(bits)})

    def channels(f, c):
        return c if f.per_channel else 1

    add("enc_w", "weight", H * d, q.enc_w.bits)
    add("enc_b", "bias", H, q.bias_bits)
    for nm, f, n in (("A_re", q.A_re, nl * H * N2), ("A_im", q.A_im, nl * H * N2), ("B", q.B, 2 * nl * H * N2),
                     ("C", q.C, 2 * nl * H * N2), ("D", q.D, nl * H), ("mix_w", q.mix_w, nl * 2 * H * H)):
        add(nm, "weight", n, f.bits)
    add("mix_b", "bias", nl * 2 * H, q.bias_bits)
    add("dec_w", "weight", C * H, q.dec_w.bits)
    add("dec_b", "bias", C, q.bias_bits)
    # zero points: only asymmetric quantizers have them, one per channel, at the code width
    zp = [("enc_w", q.enc_w, H), ("dec_w", q.dec_w, C)]
    zp += [(nm, getattr(q, nm), nl * channels(getattr(q, nm), H)) for nm in ("A_re", "A_im", "B", "C", "D")]
    zp += [("mix_w", q.mix_w, nl * channels(q.mix_w, 2 * H))]
    zp += [("x_re", q.x_re, nl * channels(q.x_re, H)), ("x_im", q.x_im, nl * channels(q.x_im, H))]
    zp += [("h", q.h, nl + 1), ("y", q.y, nl), ("act", q.act, nl), ("glu", q.glu, nl), ("pool", q.pool, 1), ("logits", q.logits, 1)]
    for nm, f, n in zp:
        if not f.symmetric and nm != "sig":
            add(f"{nm}_zero", "zero point", n, f.bits)
    # multipliers and shifts, one set per site output channel (docs/datapath.md)
    for nm, terms, ch in site_counts(cfg):
        add(f"{nm}_M", "multiplier", terms * ch, MULT_STORE_BITS)
        add(f"{nm}_S", "shift", ch, SHIFT_BITS)
    add("gelu_lut", "lut", nl * 2**q.y.bits, q.act.bits)
    add("sig_lut", "lut", nl * 2**q.glu.bits, q.sig.bits)
    # RAM
    add("state x_re", "state", nl * H * N2, q.x_re.bits)
    add("state x_im", "state", nl * H * N2, q.x_im.bits)
    if q.state_rounding == "dither":
        add("dither step phase", "state", 1, 32)  # k WEYL_STEP mod 2**32 (fixedpoint.weyl_offset)
    add("buf h", "buffer", H, q.h.bits)
    add("buf y/act", "buffer", H, max(q.y.bits, q.act.bits))
    add("buf glu", "buffer", 2 * H, q.glu.bits)
    pool_bits = 1 + math.ceil(math.log2(max(2, (2**q.h.bits) * seq_len))) if cfg.pool == "mean" else q.h.bits + 1
    add("pool accumulator", "buffer", H, pool_bits)
    flash = sum(r["bits"] for r in rows if r["kind"] not in ("state", "buffer"))
    ram = sum(r["bits"] for r in rows if r["kind"] in ("state", "buffer"))
    n_params = H * d + H + nl * (H + 6 * H * N2 + H + 2 * H * H + 2 * H) + C * H + C  # the float model
    fp32_flash = 32 * (n_params - nl * H)  # deployed float recurrence: Abar, Bbar, C complex (no log_dt)
    fp32_ram = 32 * (nl * H * N2 * 2 + H + H + 2 * H + H)  # complex64 state, h, y, glu, pool sum
    weights_bits = sum(r["bits"] for r in rows if r["kind"] in ("weight", "bias"))
    fp32_weights = fp32_flash
    b = lambda bits: math.ceil(bits / 8)  # noqa: E731
    return {
        "rows": rows,
        "flash_bytes": b(flash), "ram_bytes": b(ram), "bytes": b(flash + ram),
        "fp32_flash_bytes": b(fp32_flash), "fp32_ram_bytes": b(fp32_ram), "fp32_bytes": b(fp32_flash + fp32_ram),
        "reduction": (fp32_flash + fp32_ram) / (flash + ram),
        "weights_bytes": b(weights_bits), "fp32_weights_bytes": b(fp32_weights),
        "weights_reduction": fp32_weights / weights_bits,
        "fp32_params": n_params,
    }


# ------------------------------------------------------------------------- operation counts ---

def acc_class(bits: int) -> int:
    """Hardware accumulator width class holding a signed value of ``bits`` bits: 16, 32 or 64."""
    return 16 if bits <= 16 else 32 if bits <= 32 else 64


def site_acc_bits(cfg: ModelConfig, q: QuantConfig, L: int) -> dict:
    """(pre, post) accumulator width classes of each site, from the worst case.

    ``pre``: the integer summed before rescaling (a dot product, or one product for the sites
    that rescale each term); ``post``: after the 15-bit multiplier (M <= 2**15 - 1), where terms
    are combined, rounded and offset. The operand bounds are :func:`intssm.datapath.bounds.site_term_bounds`,
    the ones :func:`intssm.datapath.build.build_datapath` proves.
    """
    Mx = 2**15 - 1
    terms = {k: [t[0] + b] + t[1:] for k, (t, b) in site_term_bounds(cfg, q, L).items()}  # bias rides term 0's M
    w = lambda v: acc_class(int(v).bit_length() + 1)  # noqa: E731
    return {k: (w(max(t)), w(sum(t) * Mx)) for k, t in terms.items()}


def opw(f) -> int:
    """Width of a centred operand q - z: b bits symmetric, b + 1 bits asymmetric."""
    return f.bits if f.symmetric else f.bits + 1


class OpCounter(Counter):
    """Operation tally with the helpers both the cost model and tests/naive_sim.py use for labels."""

    def mul(self, wa: int, wb: int, n: int = 1):
        a, b = max(wa, wb), min(wa, wb)
        self[f"mul {a}x{b}"] += n

    def mul_rq(self, acc: int, n: int = 1):
        self[f"mul {acc}x16 (requant)"] += n

    def add(self, width: int, n: int = 1):
        self[f"add {width}"] += n

    def shift(self, n: int = 1):
        self["shift"] += n

    def clamp(self, n: int = 1):
        self["clamp"] += n

    def lut(self, n: int = 1):
        self["lut read"] += n

    def requant(self, acc: tuple, terms: int, out_fmt, n: int = 1):
        """A site output: T multiplier products (pre-width x 16), T - 1 adds to combine them, one
        rounding add, one zero-point add if the output is asymmetric (post width), one shift, one clamp."""
        pre, post = acc
        self.mul_rq(pre, terms * n)
        self.add(post, (terms - 1 + 1 + (0 if out_fmt.symmetric else 1)) * n)
        self.shift(n)
        self.clamp(n)

    def center(self, f, n: int = 1):
        """q - z of an activation operand: one subtraction when the format is asymmetric."""
        if not f.symmetric:
            self.add(16, n)


def input_operand_bits(input_bits: int) -> int:
    """Width of the encoder's input operand: an unsigned ``input_bits``-bit input code (zero point
    0, never centred) as a signed operand, ``input_bits`` + 1 bits (9 for raw uint8 data)."""
    return input_bits + 1


def step_ops(cfg: ModelConfig, q: QuantConfig, L: int = 784, input_bits: int = 8) -> OpCounter:
    """Operations of one recurrent step (all layers), following docs/datapath.md. ``input_bits``:
    the width of the input codes, the input quantizer's ``bits`` (8 for raw uint8 data,
    :attr:`intssm.datapath.intmodel.IntModel.input`).

    Weight operands are stored centred (constants); only asymmetric *activations* pay a
    subtraction, counted where they are used.
    """
    o = OpCounter()
    for part in step_parts(cfg, q, L, input_bits).values():
        o.update(part)
    return o


def step_parts(cfg: ModelConfig, q: QuantConfig, L: int = 784, input_bits: int = 8) -> dict:
    """Per-step operations split into ``encoder``, ``layer i`` and ``pooling`` (``input_bits`` as
    for :func:`step_ops`)."""
    H, N2, nl, d = cfg.d_model, cfg.d_state // 2, cfg.n_layers, cfg.d_input
    A = site_acc_bits(cfg, q, L)
    parts = {}
    o = parts["encoder"] = OpCounter()
    # encoder: H x (d products accumulated onto the bias) + requant
    o.mul(opw(q.enc_w), input_operand_bits(input_bits), H * d)
    o.add(A["enc"][0], H * d)
    o.requant(A["enc"], 1, q.h, H)
    for i in range(nl):
        o = parts[f"layer {i}"] = OpCounter()
        o.center(q.h, H)  # u'
        # state: per mode, x_re and x_im each from three products
        o.center(q.x_re, H * N2)
        o.center(q.x_im, H * N2)
        o.mul(opw(q.A_re), opw(q.x_re), H * N2)
        o.mul(opw(q.A_im), opw(q.x_im), H * N2)
        o.mul(opw(q.B), opw(q.h), H * N2)
        o.mul(opw(q.A_re), opw(q.x_im), H * N2)
        o.mul(opw(q.A_im), opw(q.x_re), H * N2)
        o.mul(opw(q.B), opw(q.h), H * N2)
        o.requant(A["x_re"], 3, q.x_re, H * N2)
        o.requant(A["x_im"], 3, q.x_im, H * N2)
        if q.state_rounding == "dither":  # each lane's 32-bit Weyl phase (one add) and its top S bits
            o.add(32, 2 * H * N2)
            o.shift(2 * H * N2)
        # output: centred new state, two dot products over modes, D u, requant, GELU table
        o.center(q.x_re, H * N2)
        o.center(q.x_im, H * N2)
        o.mul(opw(q.C), opw(q.x_re), H * N2)
        o.mul(opw(q.C), opw(q.x_im), H * N2)
        o.add(A["y"][0], 2 * H * (N2 - 1))
        o.mul(opw(q.D), opw(q.h), H)
        o.requant(A["y"], 3, q.y, H)
        o.lut(H)
        # mixing
        o.center(q.act, H)
        o.mul(opw(q.mix_w), opw(q.act), 2 * H * H)
        o.add(A["glu"][0], 2 * H * H)
        o.requant(A["glu"], 1, q.glu, 2 * H)
        o.lut(H)  # sigmoid
        # residual
        o.center(q.h, H)
        o.center(q.glu, H)
        o.mul(opw(q.glu), opw(q.sig), H)
        o.requant(A["h"], 2, q.h, H)
    o = parts["pooling"] = OpCounter()
    o.center(q.h, H)
    if cfg.pool == "mean":
        o.add(A["pool"][0], H)
    if q.state_rounding == "dither":
        parts["dither phase"] = OpCounter({"add 32": 1})  # k WEYL_STEP mod 2**32, once per step
    return parts


def final_ops(cfg: ModelConfig, q: QuantConfig, L: int = 784) -> OpCounter:
    """Operations once per sequence, after the last step: pooling requant, decoder, argmax."""
    H, C = cfg.d_model, cfg.d_output
    A = site_acc_bits(cfg, q, L)
    o = OpCounter()
    o.requant(A["pool"], 1, q.pool, H)
    o.center(q.pool, H)
    o.mul(opw(q.dec_w), opw(q.pool), C * H)
    o.add(A["logits"][0], C * H)
    o.requant(A["logits"], 1, q.logits, C)
    o.add(16, C - 1)  # argmax comparisons
    return o


# --------------------------------------------------------------------------- traffic, energy ---

def step_traffic(cfg: ModelConfig, q: QuantConfig, seq_len: int = 784) -> dict:
    """Bits read and written per step: constants (weights, biases, multipliers, shifts, zero points,
    LUT entries actually read), state (read and written once), activation buffers (written once)."""
    mem = memory(cfg, q, seq_len)
    H, nl = cfg.d_model, cfg.n_layers
    per_seq_only = {"dec_w", "dec_b", "pool_M", "pool_S", "logits_M", "logits_S", "dec_w_zero", "pool_zero", "logits_zero"}
    const = sum(r["bits"] for r in mem["rows"] if r["kind"] in ("weight", "bias", "multiplier", "shift", "zero point")
                and r["name"] not in per_seq_only)
    lut = nl * H * (q.act.bits + q.sig.bits)
    state = sum(r["bits"] for r in mem["rows"] if r["kind"] == "state")
    act = nl * H * (q.y.bits + q.act.bits + 2 * q.glu.bits + q.h.bits) + H * q.h.bits
    return {"read_const_bits": const, "read_lut_bits": lut, "read_state_bits": state, "write_state_bits": state,
            "write_act_bits": act, "read_act_bits": act, "state_bits_held": state}


#: Energy per operation, 45 nm, 0.9 V: M. Horowitz, "Computing's energy problem (and what we can do
#: about it)", ISSCC 2014, Fig. 1.1.9 table. Integer multiply energy is scaled from the 32-bit
#: figure by (wa * wb) / 32**2 (giving 0.19 pJ for 8x8 against the table's 0.2 pJ), integer add by
#: width / 32 (0.025 pJ for 8 bits against 0.03 pJ); memory by the 8 KB SRAM figure per bit.
HOROWITZ_45NM_PJ = {
    "int8 add": 0.03, "int16 add": 0.05, "int32 add": 0.1, "int8 mult": 0.2, "int32 mult": 3.1,
    "fp16 add": 0.4, "fp16 mult": 1.1, "fp32 add": 0.9, "fp32 mult": 3.7, "sram 8KB read 64 bit": 10.0,
}
SRAM_PJ_PER_BIT = HOROWITZ_45NM_PJ["sram 8KB read 64 bit"] / 64
#: Assumed cost of one float GELU or sigmoid: 5 multiplications and 5 additions (a rational/tanh
#: approximation); the integer datapath uses a table read instead.
FP_NONLIN_FLOPS = (5, 5)


def op_energy_pj(kind: str, n: int) -> float:
    if kind.startswith("mul "):
        a, b = kind.split()[1].split("x")
        return n * HOROWITZ_45NM_PJ["int32 mult"] * int(a) * int(b) / 1024
    if kind.startswith("add "):
        return n * HOROWITZ_45NM_PJ["int32 add"] * int(kind.split()[1]) / 32
    if kind in ("shift", "clamp"):  # a shift ~ a 32-bit add; a clamp = two 16-bit compares
        return n * (HOROWITZ_45NM_PJ["int32 add"] if kind == "shift" else 2 * HOROWITZ_45NM_PJ["int16 add"])
    if kind == "lut read":
        return 0.0  # counted with memory traffic (read_lut_bits)
    raise KeyError(kind)


def fp32_step(cfg: ModelConfig) -> dict:
    """Float32 recurrent step of the same model: (mults, adds, nonlinearities, bits read, bits written)."""
    H, N2, nl, d = cfg.d_model, cfg.d_state // 2, cfg.n_layers, cfg.d_input
    mul = H * d + nl * (H * N2 * (6 + 2) + 2 * H + 2 * H * H + H)
    add = H * d + nl * (H * N2 * (4 + 2) + H + 2 * H * H + H) + H
    nonlin = nl * 2 * H
    mul += nonlin * FP_NONLIN_FLOPS[0]
    add += nonlin * FP_NONLIN_FLOPS[1]
    weights = H * d + H + nl * (6 * H * N2 + H + 2 * H * H + 2 * H)
    state = nl * H * N2 * 2
    acts = nl * (H + H + 2 * H + H) + H
    return {"mults": mul, "adds": add, "read_bits": 32 * (weights + state + acts), "write_bits": 32 * (state + acts)}


def profile(cfg: ModelConfig, q: QuantConfig, seq_len: int = 784, input_bits: int = 8) -> dict:
    """Per-step and per-sequence integer work, traffic and energy, beside float32 (``input_bits``
    as for :func:`step_ops`); ``parts``: :func:`step_parts`."""
    ops = step_ops(cfg, q, seq_len, input_bits)
    fin = final_ops(cfg, q, seq_len)
    tr = step_traffic(cfg, q, seq_len)
    e_ops = sum(op_energy_pj(k, v) for k, v in ops.items())
    e_mem = SRAM_PJ_PER_BIT * (tr["read_const_bits"] + tr["read_lut_bits"] + tr["read_state_bits"]
                               + tr["write_state_bits"] + tr["read_act_bits"] + tr["write_act_bits"])
    f = fp32_step(cfg)
    e_fp_ops = f["mults"] * HOROWITZ_45NM_PJ["fp32 mult"] + f["adds"] * HOROWITZ_45NM_PJ["fp32 add"]
    e_fp_mem = SRAM_PJ_PER_BIT * (f["read_bits"] + f["write_bits"])
    return {
        "step_ops": dict(sorted(ops.items())), "final_ops": dict(sorted(fin.items())), "traffic_bits": tr,
        "sequence_ops": {k: ops.get(k, 0) * seq_len + fin.get(k, 0) for k in sorted(set(ops) | set(fin))},
        "energy_pj_per_step": {"ops": e_ops, "memory": e_mem, "total": e_ops + e_mem},
        "fp32": f | {"energy_pj_per_step": {"ops": e_fp_ops, "memory": e_fp_mem, "total": e_fp_ops + e_fp_mem}},
        "energy_ratio_fp32_over_int": (e_fp_ops + e_fp_mem) / (e_ops + e_mem),
        "seq_len": seq_len,
        "energy_table": HOROWITZ_45NM_PJ,
        "input_bits": input_bits,
        "parts": {k: dict(sorted(v.items())) for k, v in step_parts(cfg, q, seq_len, input_bits).items()},
    }
