"""RTL export: the integer model as synthesizable Verilog that runs bit-exactly like the simulator.

:func:`write_rtl` turns the integer arrays of a model (named and re-proved by
:mod:`intssm.datapath.layout`) into

* ``intssm_fixedpoint.v`` -- the primitives of :mod:`intssm.datapath.fixedpoint`, one module each;
* ``intssm_top.v`` -- a sequential datapath of one time step (docs/hardware.md): ``P`` lanes, each
  one multiplier, run the complex modes in lockstep; one scalar multiply-accumulate unit runs the
  other sites (encoder, output, mixing, residual, pooling, decoder). Constants live in ROMs read
  through registers (block RAM), the state in a RAM at its bit widths;
* ``*.hex`` -- the ROM contents (``$readmemh``; run tools from the export directory);
* ``rtl.json`` -- the design's facts: dimensions, lanes, widths, the cycle count per step, the
  output word order, and the SHA-256 of the model's arrays (so :mod:`intssm.integer.cosim` can
  refuse golden vectors of another model).

Arithmetic follows ``_run_one`` of :mod:`intssm.integer.sim` site by site. The one change of form:
a site's multipliers are folded into its constant operand where that operand is a weight
(``K = (A - z) M``, ``(W - z) M``, ``bias M``: exact integer products, as
``intssm.integer.sim.fold_constants`` does for the fast kernel), so every site is a sum of products
then one rounding shift. Every accumulator is ``WACC`` bits, from the largest bound that
:func:`intssm.datapath.bounds.site_bound` proves over all sites (via
:func:`intssm.integer.csites.site_widths`); every term operand is ``WSB`` bits, from
:func:`intssm.datapath.bounds.site_term_bounds`. Nothing wraps.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from intssm import outputs
from intssm.datapath import layout
from intssm.datapath.fixedpoint import WEYL_LANE, WEYL_MASK, WEYL_STEP, weyl_lane_of
from intssm.errors import IntssmError
from intssm.integer import cexport
from intssm.integer.rtl_verilog import BODY, PRIMITIVES

TOP, PRIM_FILE, TOP_FILE, FACTS_FILE = "intssm_top", "intssm_fixedpoint.v", "intssm_top.v", "rtl.json"
#: Output word kinds on ``out_kind``, in the order a sequence's words leave the design.
KINDS = ("logit", "counter", "x_re", "x_im")


def swidth(lo: int, hi: int) -> int:
    """Bits of the narrowest two's-complement field holding every integer of [lo, hi] (at least 2)."""
    return max(2, max((-lo - 1).bit_length() if lo < 0 else 0, hi.bit_length()) + 1)


def _sw(v) -> int:
    v = np.asarray(v)
    return swidth(int(v.min()), int(v.max())) if v.size else 2


def arrays_sha256(arrays: dict) -> str:
    """SHA-256 of a model's integer arrays (names, shapes, int64 values, in layout order)."""
    h = hashlib.sha256()
    for k in layout.NAMES:
        v = np.ascontiguousarray(np.asarray(arrays[k], dtype=np.int64))
        h.update(k.encode() + str(v.shape).encode() + v.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Facts:
    """What a generated design is: dimensions, lanes, widths and its schedule (``rtl.json``)."""

    H: int
    N2: int
    NL: int
    D_IN: int
    D_OUT: int
    P: int
    n_counters: int
    mean_pool: bool
    dither: bool
    seq_len: int
    counters: list
    WACC: int
    WSA: int
    WSB: int
    WK: int
    WXV: int
    cycles_per_step: int
    cycles_last_extra: int
    multiplications_per_step: int
    multipliers: int
    words_per_sequence: int
    rom_bits: int  # every constant ROM, depth x width
    state_bits: int  # the state RAM
    arrays_sha256: str

    @property
    def n_modes(self) -> int:
        return self.NL * self.H * self.N2


def cycles_per_step(H: int, N2: int, NL: int, D_IN: int, P: int) -> int:
    """Clock cycles from accepting one input step to accepting the next (in_valid held high):
    1 (accept) + H (D_IN + 2) (encoder) + per layer [H (7 + 9 N2/P) (state, output, GELU)
    + 2H (H + 2) (mixing) + 5H (residual)] + H (pooling). The simulation confirms it (tests)."""
    MG = N2 // P
    return 1 + H * (D_IN + 2) + NL * (H * (7 + 9 * MG) + 2 * H * (H + 2) + 5 * H) + H


def cycles_last_extra(H: int, N2: int, NL: int, D_OUT: int, n_counters: int, P: int) -> int:
    """Cycles after the last step's pooling until the design accepts the next sequence (out_ready
    held high): pooling requantization 3H, decoder D_OUT (H + 2), logits and counters out,
    the state out (2 cycles a word), the state cleared NL H (1 + N2/P)."""
    return 3 * H + D_OUT * (H + 2) + (D_OUT + n_counters) + 2 * 2 * NL * H * N2 + NL * H * (1 + N2 // P)


def multiplications_per_step(H: int, N2: int, NL: int, D_IN: int) -> int:
    """Multiplications the design performs per step: encoder H D_IN, per layer 8 per mode (six of the
    state update, two of the output sums), 3 H (output site), 2 H H (mixing), 3 H (residual)."""
    return H * D_IN + NL * (8 * H * N2 + 3 * H + 2 * H * H + 3 * H)


# --------------------------------------------------------------------------- ROM contents ---

def _pack(fields: list, widths: list) -> list:
    """Rows of unsigned integers: each row's fields (signed values) in two's complement at their
    widths, the first field in the lowest bits."""
    n = len(fields[0])
    rows = [0] * n
    off = 0
    for f, w in zip(fields, widths):
        mask = (1 << w) - 1
        for r in range(n):
            v = int(f[r])
            assert -(1 << (w - 1)) <= v < (1 << (w - 1)), (v, w)
            rows[r] |= (v & mask) << off
        off += w
    return rows


def _hex(rows: list, width: int) -> str:
    nd = max(1, -(-width // 4))
    return "".join(f"{r:0{nd}x}\n" for r in rows)


def _aw(depth: int) -> int:
    return max(1, (depth - 1).bit_length())


def design(m, lanes: int):
    """(facts, localparams (name -> value), ROM files (name -> text), constant functions) of the
    design of model ``m`` (an :class:`~intssm.datapath.intmodel.IntModel`)."""
    from intssm.datapath.bounds import site_term_bounds
    from intssm.integer.sim import fold_constants

    from intssm.datapath.intmodel import require

    a, cfg, qcfg, seq_len = require(m, "the RTL export").arrays, m.cfg, m.qcfg, m.seq_len
    H, N2, NL, D_IN, D_OUT = cfg.d_model, cfg.d_state // 2, cfg.n_layers, cfg.d_input, cfg.d_output
    if not isinstance(lanes, int) or lanes < 1 or N2 % lanes:
        raise IntssmError(f"lanes must divide the {N2} complex modes per channel (d_state / 2), got {lanes}")
    P, MG = lanes, N2 // lanes
    widths = cexport.site_widths(m)
    terms = site_term_bounds(cfg, qcfg, seq_len)
    qr = a["qrange"]
    R = {k: (int(qr[j, 0]), int(qr[j, 1])) for j, k in enumerate(layout.QRANGE_ROWS)}
    dither = qcfg.state_rounding == "dither"

    # the folded constants (exact integer products; the bounds of their sites cover them)
    K, Cc = fold_constants(a["A_re"], a["A_im"], a["A_re_z"], a["A_im_z"], a["B_re"], a["B_im"], a["B_z"],
                           a["C_re"], a["C_im"], a["C_z"], a["x_re_M"], a["x_im_M"])  # (NL H 6 N2), (NL H 2 N2)
    K = K.copy()
    K[:, :, 1, :] *= -1  # x_re' = K0 x_re - K1 x_im + K2 u: the minus folded in
    enc_wm = (a["enc_w"] - a["enc_w_z"][:, None]) * a["enc_M"][:, None]
    enc_bm = a["enc_b"] * a["enc_M"]
    mix_wm = (a["mix_w"] - a["mix_w_z"][..., None]) * a["glu_M"][..., None]
    mix_bm = a["mix_b"] * a["glu_M"]
    dec_wm = (a["dec_w"] - a["dec_w_z"][:, None]) * a["logits_M"][:, None]
    dec_bm = a["dec_b"] * a["logits_M"]
    ym0, ym1n = a["y_M"][:, 0, :], -a["y_M"][:, 1, :]
    dm = (a["D"] - a["D_z"]) * a["y_M"][:, 2, :]
    lane_r = np.array([[(weyl_lane_of(i, 0, H, h, N2, 0) * WEYL_LANE) & WEYL_MASK for h in range(H)] for i in range(NL)])
    lane_i = np.array([[(weyl_lane_of(i, 1, H, h, N2, 0) * WEYL_LANE) & WEYL_MASK for h in range(H)] for i in range(NL)])

    # widths: accumulators from the proved site bounds, term operands from the term bounds
    WACC = max(34, max(w.acc_bound for w in widths.values()).bit_length() + 1)
    max_term = max(max(t) for t, _ in terms.values())
    WSB = max(10, max_term.bit_length() + 1)
    WXR, WXI = swidth(*R["x_re"]), swidth(*R["x_im"])
    cb = lambda f: getattr(qcfg, f).centered_bound  # noqa: E731
    WXV = max(cb("x_re"), cb("x_im"), cb("h")).bit_length() + 1
    WK, WC = _sw(K), _sw(Cc)  # the lanes' constant operand: the wider of the two
    WYM, WDM = _sw(np.concatenate([ym0.ravel(), ym1n.ravel()])), _sw(dm)
    WENC, WMIX, WDEC = _sw(enc_wm), _sw(mix_wm), _sw(dec_wm)
    WBM = _sw(np.concatenate([enc_bm, mix_bm.ravel(), dec_bm]))
    WGELU, WSIG = swidth(*R["act"]), swidth(*R["sig"])
    WSA = max(WENC, WMIX, WDEC, WYM, WDM, 17, WSIG)

    rom = {}
    # mode ROM: one word per (layer, channel, mode group, slot), lane p's constant at bits
    # [p WK, (p+1) WK): slots 0..5 K0..K5, 6 and 7 C_re', C_im' (one constant per lane and cycle)
    WK = max(WK, WC)
    recs = []
    for i in range(NL):
        for h in range(H):
            for m in range(MG):
                n = m * P + np.arange(P)
                for slot in range(8):
                    v = K[i, h, slot, n] if slot < 6 else Cc[i, h, slot - 6, n]
                    recs.append(_pack([[int(x)] for x in v], [WK] * P)[0])
    rom["mode"] = (recs, WK * P)
    # per-channel ROM
    ch = [("SR", a["x_re_S"], 7), ("SI", a["x_im_S"], 7), ("ZR", a["x_re_z"], WXR), ("ZI", a["x_im_z"], WXI),
          ("YM0", ym0, WYM), ("YM1", ym1n, WYM), ("DM", dm, WDM), ("YS", a["y_S"], 7),
          ("HM0", a["h_M"][:, 0, :], 17), ("HM1", a["h_M"][:, 1, :], 17), ("HS", a["h_S"], 7)]
    off, lp_ch = 0, {}
    cols, cw = [], []
    for name, v, w in ch:
        lp_ch[f"CH_{name}"] = off
        cols.append(np.asarray(v).reshape(-1))
        cw.append(w)
        off += w
    rows = _pack(cols, cw)
    lp_ch["CH_LR"], lp_ch["CH_LI"] = off, off + 32
    rows = [r | (int(x) << off) | (int(y) << (off + 32)) for r, x, y in zip(rows, lane_r.reshape(-1), lane_i.reshape(-1))]
    rom["chan"] = (rows, off + 64)
    rom["enc"] = (_pack([enc_wm.reshape(-1)], [WENC]), WENC)
    BI_W = 7 + WBM
    rom["encb"] = (_pack([a["enc_S"], enc_bm], [7, WBM]), BI_W)
    rom["mix"] = (_pack([mix_wm.reshape(-1)], [WMIX]), WMIX)
    rom["mixb"] = (_pack([a["glu_S"].reshape(-1), mix_bm.reshape(-1)], [7, WBM]), BI_W)
    rom["dec"] = (_pack([dec_wm.reshape(-1)], [WDEC]), WDEC)
    rom["decb"] = (_pack([a["logits_S"], dec_bm], [7, WBM]), BI_W)
    rom["gelu"] = (_pack([a["gelu_lut"].reshape(-1)], [WGELU]), WGELU)
    rom["sig"] = (_pack([a["sig_lut"].reshape(-1)], [WSIG]), WSIG)
    rom["pool"] = (_pack([a["pool_S"], a["pool_M"]], [7, 16]), 23)
    files = {f"{k}.hex": _hex(rows, w) for k, (rows, w) in rom.items()}

    YC, GC = 2**qcfg.y.bits, 2**qcfg.glu.bits
    ncnt = layout.n_counters(NL)
    lp = {"H": H, "N2": N2, "NL": NL, "D_IN": D_IN, "D_OUT": D_OUT, "P": P, "MG": MG, "NCNT": ncnt,
          "YC": YC, "GC": GC, "DITHER": int(dither), "MEAN_POOL": int(cfg.pool == "mean"),
          "WEYL_STEP": WEYL_STEP, "WEYL_LANE": WEYL_LANE,
          "WAC": cb("act").bit_length() + 1, "WPC": cb("pool").bit_length() + 1,
          "WPA": terms["pool"][0][0].bit_length() + 1,  # |sum of centred h over the pooled steps|
          "WACC": WACC, "WSA": WSA, "WSB": WSB, "WTY": WSB, "WXV": WXV, "WK": WK, "WC": WC, "WYM": WYM, "WDM": WDM,
          "WBM": WBM, "WXR": WXR, "WXI": WXI, "XW": WXR + WXI, "WH": swidth(*R["h"]), "WG": swidth(*R["glu"]),
          "WY": swidth(*R["y"]), "WLOG": swidth(*R["logits"]), **lp_ch,
          "BI_S": 0, "BI_BM": 7, "BI_W": BI_W, "PL_S": 0, "PL_M": 7, "POOL_W": 23,
          "MODE_W": WK * P, "CH_W": off + 64, "ENC_W": WENC, "MIX_W": WMIX, "DEC_W": WDEC, "GELU_W": WGELU,
          "SIG_W": WSIG,
          "MODE_D": NL * H * MG * 8, "X_D": NL * H * MG, "CH_D": NL * H, "ENC_D": H * D_IN, "MIX_D": NL * 2 * H * H, "MIXB_D": NL * 2 * H,
          "DEC_D": D_OUT * H, "GELU_D": NL * YC, "SIG_D": NL * GC,
          "MODE_AW": _aw(NL * H * MG * 8), "X_AW": _aw(NL * H * MG), "CH_AW": _aw(NL * H), "ENC_AW": _aw(H * D_IN), "H_AW": _aw(H),
          "MIX_AW": _aw(NL * 2 * H * H), "MIXB_AW": _aw(NL * 2 * H), "DEC_AW": _aw(D_OUT * H), "DO_AW": _aw(D_OUT),
          "GELU_AW": _aw(NL * YC), "SIG_AW": _aw(NL * GC),
          "POOL_Z": int(a["pool_z"][0]), "LOGITS_Z": int(a["logits_z"][0])}
    for k, (lo, hi) in R.items():
        lp[f"QMIN_{k.upper().replace('_', '')}"] = lo
        lp[f"QMAX_{k.upper().replace('_', '')}"] = hi
    funcs = {"hz": a["h_z"], "yz": a["y_z"], "actz": a["act_z"], "gluz": a["glu_z"]}
    facts = Facts(H=H, N2=N2, NL=NL, D_IN=D_IN, D_OUT=D_OUT, P=P, n_counters=ncnt, mean_pool=cfg.pool == "mean",
                  dither=dither, seq_len=seq_len, counters=layout.counter_names(NL), WACC=WACC, WSA=WSA, WSB=WSB,
                  WK=WK, WXV=WXV, cycles_per_step=cycles_per_step(H, N2, NL, D_IN, P),
                  cycles_last_extra=cycles_last_extra(H, N2, NL, D_OUT, ncnt, P),
                  multiplications_per_step=multiplications_per_step(H, N2, NL, D_IN), multipliers=P + 1,
                  words_per_sequence=D_OUT + ncnt + 2 * NL * H * N2,
                  rom_bits=sum(len(rows) * w for rows, w in rom.values()), state_bits=NL * H * MG * P * (WXR + WXI),
                  arrays_sha256=arrays_sha256(a))
    return facts, lp, files, funcs, widths


def _signed_params(lp: dict) -> str:
    signed = {k for k in lp if k.startswith(("QMIN_", "QMAX_")) or k in ("POOL_Z", "LOGITS_Z")}
    out = []
    for k, v in lp.items():
        if k in signed:
            out.append(f"    localparam signed [31:0] {k} = {'-' if v < 0 else ''}32'sd{abs(v)};")
        elif k in ("WEYL_STEP", "WEYL_LANE"):
            out.append(f"    localparam [31:0] {k} = 32'h{v:08X};")
        else:
            out.append(f"    localparam integer {k} = {v};")
    return "\n".join(out)


def _function(name: str, values) -> str:
    cases = "\n".join(f"            {i}: {name} = {'-' if int(v) < 0 else ''}32'sd{abs(int(v))};" for i, v in enumerate(values))
    return (f"    function signed [31:0] {name}(input [15:0] i);\n        case (i)\n{cases}\n"
            f"            default: {name} = 32'sd0;\n        endcase\n    endfunction")


def top_source(facts: Facts, lp: dict, funcs: dict, widths: dict, source: str) -> str:
    f = facts
    sites = "\n".join(f"//   {w.describe()}" for w in widths.values())
    head = f"""// {TOP_FILE} -- generated by intssm (export-rtl) from {source}. Do not edit.
//
// One time step of the integer S4D datapath (docs/datapath.md), bit-exact with intssm.integer.sim.
// Ports and schedule: docs/hardware.md. {f.P} lanes (one multiplier each) run the {f.N2} complex modes
// of a channel in lockstep; one scalar multiply-accumulate unit runs the other sites.
// Cycles per step: {f.cycles_per_step} (from accepting one input step to accepting the next);
// after the last step of a sequence: {f.cycles_last_extra} more with out_ready high.
// Multiplications per step: {f.multiplications_per_step} on {f.multipliers} multipliers.
// Proved site bounds (intssm.integer.cexport.site_widths), all accumulators WACC = {f.WACC} bits:
{sites}
module {TOP} (
    input  wire                 clk,
    input  wire                 rst,        // synchronous, active high
    input  wire                 in_valid,
    output wire                 in_ready,
    input  wire [{8 * f.D_IN - 1}:0]        in_data,    // input code p_j in bits [8j+7 : 8j]
    input  wire                 in_last,    // this step is its sequence's last
    output wire                 out_valid,
    input  wire                 out_ready,
    output wire [1:0]           out_kind,   // 0 logit, 1 counter, 2 x_re, 3 x_im
    output wire [31:0]          out_data,   // sign-extended
    output wire                 out_last    // the sequence's last output word
);
{_signed_params(lp)}
{chr(10).join(_function(k, v) for k, v in funcs.items())}
"""
    return head + BODY


def write_rtl(m, out_dir: Path, lanes: int = 8, source: str = "an intssm integer model") -> tuple[list[Path], Facts]:
    """Write the design of the model ``m`` (an :class:`~intssm.datapath.intmodel.IntModel`) into
    ``out_dir`` (each file atomically); returns the paths written and the design's :class:`Facts`.
    ``source``: what the generated files name as their origin."""
    try:
        cexport.check(m)  # the limits the C export has (the RTL shares its site widths)
    except IntssmError as e:
        raise IntssmError(str(e).replace("C export: ", "RTL export: ", 1)) from None
    out_dir = outputs.check_dir(out_dir, what="RTL export directory")
    facts, lp, files, funcs, widths = design(m, lanes)
    src = source
    files[TOP_FILE] = top_source(facts, lp, funcs, widths, src)
    files[PRIM_FILE] = PRIMITIVES
    files[FACTS_FILE] = json.dumps(asdict(facts) | {"top": TOP, "sources": [PRIM_FILE, TOP_FILE],
                                                    "kinds": list(KINDS)}, indent=1) + "\n"
    return [outputs.write_text(out_dir / k, v, quiet=True) for k, v in files.items()], facts


def read_facts(d: Path) -> Facts:
    """The :class:`Facts` of an export directory (``rtl.json``); IntssmError if it holds none."""
    p = Path(d) / FACTS_FILE
    try:
        raw = json.loads(p.read_text())
        return Facts(**{k: raw[k] for k in Facts.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IntssmError(f"{d} holds no intssm RTL export ({FACTS_FILE}: {e})") from None


def utilization_target(facts: Facts) -> float:
    """cycles per step / (multiplications per step / multipliers): 1.0 keeps every multiplier busy."""
    return facts.cycles_per_step / (facts.multiplications_per_step / facts.multipliers)




# ----------------------------------------------------------------------- synthesis (iCE40) ---

#: The iCE40 UP5K's resources (Lattice iCE40 UltraPlus family data sheet): logic cells (one 4-input
#: LUT and one flip-flop each), 16 x 16 multiply-accumulate blocks, 4-kbit block RAMs, 256-kbit
#: single-port RAMs.
UP5K = {"lc": 5280, "dsp": 8, "bram": 30, "spram": 4}

#: The pin wrapper for place and route: the UP5K's 48-pin package has 39 I/O, fewer than the
#: design's parallel ports, so the input code arrives one bit a cycle and each output word leaves
#: one bit a cycle through shift registers (8 D_IN + 35 flip-flops; the datapath is unchanged).
PIN_WRAPPER = """// intssm_ice40.v -- generated by intssm (export-rtl --synth). Do not edit.
// Pins for place and route on the iCE40 UP5K (SG48): serial input code and output word around {top}.
module intssm_ice40 (
    input  wire clk, rst, in_valid, in_bit, in_last, out_ready,
    output wire in_ready, out_valid, out_bit
);
    reg  [{win}:0] in_sh;
    reg  [34:0] out_sh;
    wire [1:0]  kind;
    wire [31:0] word;
    wire        last;
    always @(posedge clk) begin
        in_sh <= {{in_sh[{win_1}:0], in_bit}};
        out_sh <= (out_valid && out_ready) ? {{last, kind, word}} : {{1'b0, out_sh[34:1]}};
    end
    assign out_bit = out_sh[0];
    {top} u (.clk(clk), .rst(rst), .in_valid(in_valid), .in_ready(in_ready), .in_data(in_sh), .in_last(in_last),
             .out_valid(out_valid), .out_ready(out_ready), .out_kind(kind), .out_data(word), .out_last(last));
endmodule
"""


def _tool(name: str) -> str:
    import shutil

    p = shutil.which(name)
    if p is None:
        raise IntssmError(f"{name} is not installed (Debian: apt-get install yosys nextpnr-ice40 fpga-icestorm)")
    return p


def _run(cmd: list, cwd: Path, what: str, timeout: int) -> str:
    """Run a synthesis tool (:func:`intssm.procs.run`: its process group is killed on a timeout or
    an interrupt); its output, or IntssmError with its first error line."""
    from intssm import procs

    r = procs.run(cmd, cwd=cwd, what=what, check=False, timeout=timeout)
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "no output")
        raise IntssmError(f"{what} failed: {first}")
    return r.stdout + r.stderr


def _cells(stat: str) -> dict:
    """Cell counts of the last ``stat`` table in a Yosys log."""
    import re

    part = stat[stat.rfind("Number of cells:"):]
    cells = {}
    for m in re.finditer(r"^\s+(\$?[A-Za-z_][\w$]*)\s+(\d+)\s*$", part, re.M):
        cells[m.group(1)] = int(m.group(2))
    return cells


def synthesize(d: Path, facts: Facts, place: bool = True, generic: bool = True, seed: int = 1, timeout: int = 3600) -> dict:
    """Synthesize the design in export directory ``d`` for the iCE40 UP5K (``yosys synth_ice40 -dsp``),
    place and route it (``nextpnr-ice40 --up5k``, SG48, unless ``place`` is False) and count generic
    gates (``yosys synth``, memories kept as memories). Returns the figures (JSON-ready): cells,
    logic cells, flip-flops, SB_MAC16, block RAMs, SPRAM, the maximum clock nextpnr's timing
    analysis reports, and from it the time per step and per sequence. Files go to ``d/synth``."""
    import re

    d = Path(d)
    out = d / "synth"
    out.mkdir(exist_ok=True)
    yosys = _tool("yosys")
    (out / "intssm_ice40.v").write_text(PIN_WRAPPER.format(top=TOP, win=8 * facts.D_IN - 1, win_1=max(8 * facts.D_IN - 2, 0)))
    srcs = [PRIM_FILE, TOP_FILE, "synth/intssm_ice40.v"]
    log = _run([yosys, "-q", "-p", f"read_verilog {' '.join(srcs)}; synth_ice40 -dsp -top intssm_ice40 -json synth/ice40.json; "
                "tee -o synth/ice40_stat.txt stat"], d, "yosys synth_ice40", timeout)
    cells = _cells((out / "ice40_stat.txt").read_text())
    ff = sum(v for k, v in cells.items() if k.startswith("SB_DFF"))
    rep = {"device": "iCE40 UP5K (SG48)", "yosys_cells": cells, "luts": cells.get("SB_LUT4", 0), "flip_flops": ff,
           "sb_mac16": cells.get("SB_MAC16", 0), "bram_4k": cells.get("SB_RAM40_4K", 0), "spram": cells.get("SB_SPRAM256KA", 0),
           "carry": cells.get("SB_CARRY", 0), "up5k": UP5K}
    del log
    if place and (rep["luts"] > UP5K["lc"] or rep["sb_mac16"] > UP5K["dsp"] or rep["bram_4k"] > UP5K["bram"]):
        rep["fits"] = False  # nextpnr would stop at packing; the figures above say by how much
        place = False
    if place:
        npnr = _tool("nextpnr-ice40")
        try:
            txt = _run([npnr, "--up5k", "--package", "sg48", "--json", "synth/ice40.json", "--asc", "synth/ice40.asc",
                        "--pcf-allow-unconstrained", "--freq", "20", "--timing-allow-fail", "--seed", str(seed)], d,
                       "nextpnr-ice40", timeout)
        except IntssmError as e:
            if "Failed to expand region" not in str(e):  # packing found more logic cells than the device has
                raise
            rep |= {"fits": False, "place_error": str(e)}
            place = False
    if place:
        (out / "nextpnr.log").write_text(txt)
        util = {}
        for m in re.finditer(r"^Info:\s+(ICESTORM_\w+|SB_\w+):\s+(\d+)/\s*(\d+)", txt, re.M):
            util[m.group(1)] = [int(m.group(2)), int(m.group(3))]
        # the design's clock (nextpnr also times a '$PACKER_GND_NET' pseudo-clock of combinational DSPs)
        fm = [f for c, f in re.findall(r"Max frequency for clock\s+'([^']*)':\s+([\d.]+) MHz", txt) if not c.startswith("$")]
        if not fm:
            raise IntssmError("nextpnr-ice40 reported no maximum frequency")
        fmax = float(fm[-1])
        us = facts.cycles_per_step / fmax
        rep |= {"fits": True, "placed": util, "logic_cells": util.get("ICESTORM_LC", [None])[0], "fmax_mhz": fmax,
                "us_per_step": us, "ms_per_sequence": us * facts.seq_len / 1000, "sequence_steps": facts.seq_len}
    rep |= {"cycles_per_step": facts.cycles_per_step, "multipliers": facts.multipliers, "lanes": facts.P,
            "multiplications_per_step": facts.multiplications_per_step, "busy_ratio": utilization_target(facts)}
    if not generic:
        return rep
    gen = _run([yosys, "-q", "-p", f"read_verilog {PRIM_FILE} {TOP_FILE}; synth -flatten -top {TOP} -run begin:fine; "
                "opt -fast -full; techmap; opt -fast; abc -g AND,NAND,OR,NOR,XOR,XNOR,ANDNOT,ORNOT,MUX; opt_clean; "
                "tee -o synth/generic_stat.txt stat"], d, "yosys synth (generic gates)", timeout)
    del gen
    g = _cells((out / "generic_stat.txt").read_text())
    # memories stay memories ($mem_v2: the ROMs, the state RAM and the register files Yosys infers)
    rep["generic"] = {"gates": sum(v for k, v in g.items() if k.startswith("$_") and "DFF" not in k),
                      "flip_flops": sum(v for k, v in g.items() if "DFF" in k), "memories": g.get("$mem_v2", 0),
                      "rom_bits": facts.rom_bits, "state_bits": facts.state_bits, "cells": g}
    return rep


def describe_synthesis(r: dict) -> str:
    """The synthesis figures in a few lines."""
    lines = [f"{r['device']}: {r['luts']} LUTs, {r['flip_flops']} flip-flops, {r['sb_mac16']} SB_MAC16, "
             f"{r['bram_4k']} block RAMs, {r['spram']} SPRAM (Yosys synth_ice40 -dsp)"]
    if r.get("fits") is False:
        why = f" ({r['place_error']})" if r.get("place_error") else ""
        lines.append(f"  does not fit the UP5K ({r['up5k']['lc']} logic cells, {r['up5k']['dsp']} SB_MAC16, "
                     f"{r['up5k']['bram']} block RAMs): not placed{why}")
    if "fmax_mhz" in r:
        lines.append(f"  placed and routed: {r['logic_cells']} logic cells; max clock {r['fmax_mhz']:.2f} MHz; "
                     f"{r['cycles_per_step']} cycles per step = {r['us_per_step']:.2f} us; "
                     f"{r['ms_per_sequence']:.2f} ms per {r['sequence_steps']}-step sequence")
    g = r.get("generic")
    if g:
        lines.append(f"  generic (yosys synth): {g['gates']} gates, {g['flip_flops']} flip-flops outside {g['memories']} "
                     f"memories; ROMs {g['rom_bits']} bits, state RAM {g['state_bits']} bits")
    return "\n".join(lines)
