"""Torch quantized S4D in recurrent mode: integer codes carried in float64 tensors.

Every value is an exact integer below 2**53 (proved per site by :func:`intssm.datapath.build.build_datapath`),
so this forward pass computes the same integers as the Numba simulator, while straight-through
estimators let gradients reach the float weights (QAT). It reads the integer constants of the
:class:`~intssm.datapath.build.Datapath`; it never calls the simulator.

Weight codes:  q = clamp(round_half_up(w / s) + z, qmin, qmax),  used centred: q - z.
Biases:        int32 codes at the scale of the accumulator they join.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from intssm.errors import IntssmError
from intssm.datapath import layout
from intssm.datapath.fixedpoint import WEYL_MASK, WEYL_STEP, weyl_lane_of
from intssm.training.fixedpoint_torch import clamp_t, offset_rshift_t, round_half_up_t, rounding_rshift_t, rshift_clamp_t, weyl_offset_t
from intssm.training.calibrate import discrete_parts
from intssm.training.model import S4DModel
from intssm.training.pointwise import layer_tail, lut_surrogate, tail_constants
from intssm.datapath.build import Datapath
from intssm.datapath.inputq import RAW_UINT8
from intssm.datapath.qspec import INPUT_SCALE

T64 = torch.float64


class QuantS4D(torch.nn.Module):
    """Quantized recurrent S4D over a float :class:`S4DModel` (whose weights QAT trains)."""

    def __init__(self, model: S4DModel, dp: Datapath, iq=None):
        super().__init__()
        self.model = model
        self.dp = dp
        self.c = datapath_tensors(dp)
        self.fused_scan = True  # QAT (ste=True) runs the state scan in intssm.training.scan; evaluation never does
        self.fused_tail = True  # ... and each layer's pointwise steps in intssm.training.pointwise
        self._tail_k: dict = {}
        self.discrete = None  # nn.ParameterDict of Abar/Bbar per layer when QAT learns them directly
        # the input quantizer (intssm.datapath.inputq), set here once: RAW_UINT8 (None) for raw uint8 data,
        # an InputQuant for float data (self.model then reads its codes / 255)
        self.iq = RAW_UINT8 if iq is None else iq

    @property
    def counters(self) -> list[str]:
        """Names of the saturation counters (:func:`intssm.datapath.layout.counter_names`)."""
        return layout.counter_names(self.dp.cfg.n_layers)

    def input_codes(self, x: np.ndarray, lengths=None) -> np.ndarray:
        """The datapath's uint8 input codes of ``x`` (:func:`intssm.datapath.inputq.input_codes`)."""
        from intssm.datapath.inputq import input_codes

        return input_codes(self.iq, self.dp.cfg.d_input, x, lengths)

    def make_discrete(self, values: dict | None = None):
        """Learn Abar, Bbar directly (QAT 'discrete'): parameters initialised from the float model."""
        P = {}
        for i, layer in enumerate(self.model.layers):
            d = discrete_parts(layer.ssm)
            for k in ("A_re", "A_im", "B_re", "B_im"):
                v = values[f"{k}_{i}"] if values is not None else d[k].detach()
                P[f"{k}_{i}"] = torch.nn.Parameter(torch.as_tensor(v, dtype=T64).clone())
        self.discrete = torch.nn.ParameterDict(P)

    # --------------------------------------------------------------------- weight codes ---
    def _wq(self, w, key, ste):
        t = self.dp.tq[key]
        s = torch.as_tensor(t.scale, dtype=T64)
        z = torch.as_tensor(t.zero, dtype=T64)
        shape = (-1,) + (1,) * (w.dim() - 1)
        q = round_half_up_t(w.to(T64) / s.view(shape), ste) + z.view(shape)
        return clamp_t(q, float(t.qmin), float(t.qmax))

    def _bq(self, b, scale, ste):
        lim = self.dp.qcfg.bias_bound
        return clamp_t(round_half_up_t(b.to(T64) / torch.as_tensor(scale, dtype=T64), ste), -lim, lim - 1)

    def stable_abar(self, qr: torch.Tensor, qi: torch.Tensor, p: str):
        """Abar codes (H, N/2) moved inside the unit circle: while a mode's quantized value
        (s_re (q_re - z_re))**2 + (s_im (q_im - z_im))**2 is >= 1, its larger component (in real
        units; the real part on a tie) steps one code toward zero. Codes stay in range (the zero
        point is a code) and stable modes are untouched; the steps carry no gradient (the STE of
        the rounding passes through)."""
        tr, ti = self.dp.tq[p + "A_re"], self.dp.tq[p + "A_im"]
        sr, si = (torch.as_tensor(t.scale, dtype=T64)[:, None] for t in (tr, ti))
        zr, zi = (torch.as_tensor(t.zero, dtype=T64)[:, None] for t in (tr, ti))
        cr, ci = (qr - zr).detach(), (qi - zi).detach()
        while True:
            vr, vi = cr * sr, ci * si
            bad = vr * vr + vi * vi >= 1
            if not bad.any():
                break
            step_r = bad & (vr.abs() >= vi.abs())
            cr = cr - torch.sign(cr) * step_r
            ci = ci - torch.sign(ci) * (bad & ~step_r)
        return qr + (cr + zr - qr).detach(), qi + (ci + zi - qi).detach()

    def weight_codes(self, ste: bool = False) -> dict:
        """Integer codes (float64 tensors) of every weight and bias, keyed as in the exported artifact."""
        m, tq = self.model, self.dp.tq
        W = {
            "enc_w": self._wq(m.encoder.weight, "enc_w", ste),
            "enc_b": self._bq(m.encoder.bias, tq["enc_w"].scale * INPUT_SCALE, ste),
        }
        per = {k: [] for k in ("A_re", "A_im", "B_re", "B_im", "C_re", "C_im", "D", "mix_w", "mix_b")}
        for i, layer in enumerate(m.layers):
            p = f"l{i}."
            d = discrete_parts(layer.ssm)
            if self.discrete is not None:  # QAT 'discrete': Abar and Bbar are parameters themselves
                d = d | {k: self.discrete[f"{k}_{i}"] for k in ("A_re", "A_im", "B_re", "B_im")}
            for k in ("A_re", "A_im", "D"):
                per[k].append(self._wq(d[k], p + k, ste))
            if self.dp.qcfg.stable_abar:
                per["A_re"][-1], per["A_im"][-1] = self.stable_abar(per["A_re"][-1], per["A_im"][-1], p)
            for k in ("B_re", "B_im", "C_re", "C_im"):
                per[k].append(self._wq(d[k], p + k[0], ste))
            per["mix_w"].append(self._wq(layer.mix.weight, p + "mix_w", ste))
            per["mix_b"].append(self._bq(layer.mix.bias, tq[p + "mix_w"].scale * tq[p + "act"].scale[0], ste))
        W.update({k: torch.stack(v) for k, v in per.items()})
        W["dec_w"] = self._wq(m.decoder.weight, "dec_w", ste)
        W["dec_b"] = self._bq(m.decoder.bias, tq["dec_w"].scale * tq["pool"].scale[0], ste)
        return W

    # -------------------------------------------------------------------------- forward ---
    def forward(self, p: torch.Tensor, ste: bool = False, counts: bool = False, lengths=None):
        """Input codes ``p`` (B, L, d_input) -> (integer logit codes (B, d_output), counters or None).

        ``lengths`` (B,): sequence b runs for lengths[b] steps (None: all L); later steps are
        padding, computed here in the batch but never pooled or counted, so the integers equal a
        run that stops at lengths[b]. Every step follows docs/datapath.md; counters[name] = how
        many values that site clipped.
        """
        c, dp = self.c, self.dp
        W = self.weight_codes(ste)
        p = p.to(T64)
        Bsz, L, _ = p.shape
        nl, H = dp.cfg.n_layers, dp.cfg.d_model
        lens = None if lengths is None else torch.as_tensor(lengths).long()
        if lens is not None and (lens.shape != (Bsz,) or int(lens.min()) < 1 or int(lens.max()) > L):
            raise IntssmError(f"lengths must be (batch,) values in 1..{L}")
        if dp.cfg.pool == "mean" and (L != dp.seq_len or (lens is not None and bool((lens != L).any()))):
            raise IntssmError(f"this model mean-pools over exactly {dp.seq_len} steps (quantized so); "
                              "variable-length data need a model with pool 'last'")
        cnt = {n: torch.zeros((), dtype=torch.int64) for n in self.counters} if counts else None
        valid = None if lens is None else (torch.arange(L)[None, :] < lens[:, None])[..., None]  # (B L 1)

        def rq(acc, S, z, lo, hi, name, timed=True):
            if cnt is None:
                return rshift_clamp_t(acc, S, z, lo, hi, ste)
            r = rounding_rshift_t(acc, S, ste) + z
            out = (r < lo) | (r > hi)
            cnt[name] += (out & valid).sum() if timed and valid is not None else out.sum()
            return clamp_t(r, lo, hi)

        ew = W["enc_w"] - c["enc_w_z"][:, None]  # (H d)
        A_re = W["A_re"] - c["A_re_z"][..., None]  # (nl H N2)
        A_im = W["A_im"] - c["A_im_z"][..., None]
        B_re, B_im = W["B_re"] - c["B_z"][..., None], W["B_im"] - c["B_z"][..., None]
        C_re, C_im = W["C_re"] - c["C_z"][..., None], W["C_im"] - c["C_z"][..., None]
        D = W["D"] - c["D_z"]  # (nl H)
        mw = W["mix_w"] - c["mix_w_z"][..., None]  # (nl 2H H)
        qr = c["qrange"]
        # Only the state is recurrent: every other site is pointwise in time, so each layer runs
        # over the whole sequence at once, around a scan of the state (same integers, same order).
        acc = p @ ew.T + W["enc_b"]  # (B L H)
        h = rq(acc * c["enc_M"], c["enc_S"], c["h_z"][0], *qr["h"], "h0")
        for i in range(nl):
            pre = f"l{i}."
            u = h - c["h_z"][i]  # (B L H)
            t1, t2, nsat_r, nsat_i = self._scan(i, u, A_re[i], A_im[i], B_re[i], B_im[i], C_re[i], C_im[i], ste, valid)
            if cnt is not None:
                cnt[pre + "x_re"] += nsat_r
                cnt[pre + "x_im"] += nsat_i
            if self.fused_tail and ste and cnt is None:  # steps 3-7 in one Numba kernel each way
                h = layer_tail(t1, t2, h, D[i], mw[i], W["mix_b"][i], self._tail_constants(i))
                continue
            M, S = c["y_M"][i], c["y_S"][i]
            acc_y = t1 * M[0] - t2 * M[1] + (D[i] * u) * M[2]
            y = rq(acc_y, S, c["y_z"][i], *qr["y"], pre + "y")
            a = self._lut(y, i, "gelu", qr["y"][0], F.gelu, c["y_s"][i], c["act_s"][i], c["y_z"][i], ste)
            acc_g = (a - c["act_z"][i]) @ mw[i].T + W["mix_b"][i]  # (B L 2H)
            g = rq(acc_g * c["glu_M"][i], c["glu_S"][i], c["glu_z"][i], *qr["glu"], pre + "glu")
            sg = self._lut(g[..., H:], i, "sig", qr["glu"][0], torch.sigmoid, c["glu_s"][i], c["sig_s"][i], c["glu_z"][i], ste)
            M, S = c["h_M"][i], c["h_S"][i]
            acc_h = (h - c["h_z"][i]) * M[0] + ((g[..., :H] - c["glu_z"][i]) * sg) * M[1]
            h = rq(acc_h, S, c["h_z"][i + 1], *qr["h"], pre + "h")
        hc = h - c["h_z"][nl]
        if dp.cfg.pool == "mean":
            pool_acc = hc.sum(1)
        else:
            pool_acc = hc[:, -1] if lens is None else hc[torch.arange(Bsz), lens - 1]
        pooled = rq(pool_acc * c["pool_M"], c["pool_S"], c["pool_z"], *qr["pool"], "pool", False)
        acc_l = (pooled - c["pool_z"]) @ (W["dec_w"] - c["dec_w_z"][:, None]).T + W["dec_b"]
        logits = rq(acc_l * c["logits_M"], c["logits_S"], c["logits_z"], *qr["logits"], "logits", False)
        return logits, ({k: int(v) for k, v in cnt.items()} if cnt is not None else None)

    def _tail_constants(self, i: int) -> dict:
        if i not in self._tail_k:
            self._tail_k[i] = tail_constants(self.c, i)
        return self._tail_k[i]

    def _scan(self, i, u, A_re, A_im, B_re, B_im, C_re, C_im, ste, valid=None):
        """The state recurrence of layer ``i`` over u' (B, L, H): the only sequential part.

        Returns the per-step sums t1 = sum_n C_re' x_re', t2 = sum_n C_im' x_im' (B, L, H) of the
        new state, and how often x_re and x_im were clipped (at steps where ``valid`` (B, L, 1) holds).
        """
        c, qr = self.c, self.c["qrange"]
        Bsz, L, H = u.shape
        zr, zi = c["x_re_z"][i][:, None], c["x_im_z"][i][:, None]  # (H 1)
        Mr, Sr = c["x_re_M"][i], c["x_re_S"][i][:, None]  # (3 H), (H 1)
        Mi, Si = c["x_im_M"][i], c["x_im_S"][i][:, None]
        # fold multipliers into the constants: (a' M) x == (a' x) M for exact integers
        KR = (A_re * Mr[0][:, None], A_im * Mr[1][:, None], B_re * Mr[2][:, None])
        KI = (A_re * Mi[0][:, None], A_im * Mi[1][:, None], B_im * Mi[2][:, None])
        lor, hir = qr["x_re"][0] - zr, qr["x_re"][1] - zr  # clip range of the centred state
        loi, hii = qr["x_im"][0] - zi, qr["x_im"][1] - zi
        dither = self.dp.qcfg.state_rounding == "dither"
        if self.fused_scan and ste:
            from intssm.training.scan import fused_scan

            t = lambda v: v.detach().numpy().reshape(-1)  # noqa: E731
            return fused_scan(u, torch.stack(KR), torch.stack(KI), C_re, C_im, t(Sr), t(Si),
                              t(lor), t(hir), t(loi), t(hii), i if dither else -1)
        if dither:  # every mode's lane (fixedpoint.weyl_lane_of), (H N2)
            N2 = A_re.shape[-1]
            hs, ns = torch.arange(H, dtype=T64)[:, None], torch.arange(N2, dtype=T64)
            jr, ji = weyl_lane_of(i, 0, H, hs, N2, ns), weyl_lane_of(i, 1, H, hs, N2, ns)
        xr = torch.zeros(Bsz, H, A_re.shape[-1], dtype=T64)
        xi = torch.zeros_like(xr)
        t1, t2 = [], []
        nsat_r = torch.zeros((), dtype=torch.int64)
        nsat_i = torch.zeros((), dtype=torch.int64)
        for k in range(L):
            uk = u[:, k, :, None]  # (B H 1)
            if dither:
                phase = (k * WEYL_STEP) & WEYL_MASK
                vr = offset_rshift_t(KR[0] * xr - KR[1] * xi + KR[2] * uk, weyl_offset_t(phase, jr, Sr), Sr, ste)
                vi = offset_rshift_t(KI[0] * xi + KI[1] * xr + KI[2] * uk, weyl_offset_t(phase, ji, Si), Si, ste)
            else:
                vr = rounding_rshift_t(KR[0] * xr - KR[1] * xi + KR[2] * uk, Sr, ste)
                vi = rounding_rshift_t(KI[0] * xi + KI[1] * xr + KI[2] * uk, Si, ste)
            if not ste:
                ok = valid[:, k, :, None] if valid is not None else True  # (B 1 1)
                nsat_r += (((vr < lor) | (vr > hir)) & ok).sum()
                nsat_i += (((vi < loi) | (vi > hii)) & ok).sum()
            xr = torch.clamp(vr, lor, hir)  # gradient passes for lo <= v <= hi
            xi = torch.clamp(vi, loi, hii)
            t1.append((xr * C_re).sum(-1))
            t2.append((xi * C_im).sum(-1))
        return torch.stack(t1, 1), torch.stack(t2, 1), nsat_r, nsat_i

    def _lut(self, code, i, name, lo, fn, s_in, s_out, z_in, ste):
        """Table lookup out = LUT[code - lo]; with ``ste`` the gradient is fn'(v) s_in / s_out."""
        out = self.c[name + "_lut"][i][(code.detach() - lo).long()]
        if not ste:
            return out
        f = lut_surrogate(code, fn, s_in, s_out, z_in)
        return out + (f - f.detach())

    def real_logits(self, codes: torch.Tensor) -> torch.Tensor:
        return self.c["logits_s"] * (codes - self.c["logits_z"])


def datapath_tensors(dp: Datapath) -> dict:
    """The datapath's integer constants as float64 tensors (plus the few real scales STE needs)."""
    arr = layout.from_datapath(dp)
    c = {k: torch.as_tensor(v, dtype=T64) for k, v in arr.items()}
    c["qrange"] = {n: (float(arr["qrange"][j, 0]), float(arr["qrange"][j, 1])) for j, n in enumerate(layout.QRANGE_ROWS)}
    nl = dp.cfg.n_layers
    for n in ("y", "act", "glu", "sig"):
        c[n + "_s"] = [float(dp.tq[f"l{i}.{n}"].scale[0]) for i in range(nl)]
    c["logits_s"] = float(dp.tq["logits"].scale[0])
    return c
