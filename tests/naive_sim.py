"""A slow, obviously-correct integer simulator in plain Python ints, counting every operation.

It is a third execution of docs/datapath.md (after intssm.training.qmodel and intssm.integer.sim): the tests
demand that its logits equal the Numba simulator's and that its operation tally equals the cost
model of intssm.integer.cost, which is derived from the description alone.
"""

from intssm.integer.cost import OpCounter, opw, site_acc_bits
from intssm.datapath.layout import QRANGE_ROWS


def rshift(v, s):
    return v if s == 0 else (v + 2 ** (s - 1)) // 2**s


WEYL_STEP, WEYL_LANE = 0x9E3779B9, 0x6A09E667  # docs/datapath.md, step 2 (dithered rounding)


def weyl(k, j, s):
    """The dither offset of lane j at step k: floor(frac(k WEYL_STEP / 2**32 + j WEYL_LANE / 2**32) 2**s)."""
    return ((k * WEYL_STEP + j * WEYL_LANE) % 2**32) // 2 ** (32 - s)


def clamp(v, lo, hi):
    return min(max(v, lo), hi)


def run(arrays, cfg, q, P, input_bits: int = 8):
    """Simulate one sequence P (L, d_in) of Python-int-convertible values (codes of ``input_bits``
    bits) -> (logits, OpCounter)."""
    a = {k: v.tolist() for k, v in arrays.items()}
    H, N2, nl, d, C = cfg.d_model, cfg.d_state // 2, cfg.n_layers, cfg.d_input, cfg.d_output
    L = len(P)
    A = site_acc_bits(cfg, q, L)
    o = OpCounter()
    qr = {n: tuple(a["qrange"][j]) for j, n in enumerate(QRANGE_ROWS)}
    xr = [[[a["x_re_z"][i][h]] * N2 for h in range(H)] for i in range(nl)]
    xi = [[[a["x_im_z"][i][h]] * N2 for h in range(H)] for i in range(nl)]
    pool = [0] * H

    dither = q.state_rounding == "dither"

    def requant(terms, Ms, S, z, rng, pre_post, fmt, signs, offset=None):
        acc = 0
        for t, m, sg in zip(terms, Ms, signs):
            acc += sg * t * m
        o.requant(pre_post, len(terms), fmt)
        if offset is not None:  # dithered: floor((acc + d) / 2**S)
            return clamp((acc + offset) // 2**S + z, *rng)
        return clamp(rshift(acc, S) + z, *rng)

    def offset(k, i, part, hh, n, S):
        if not dither:
            return None
        o.add(32)  # the lane's phase: the previous lane's plus WEYL_LANE, mod 2**32
        o.shift()  # its top S bits
        return weyl(k, ((2 * i + part) * H + hh) * N2 + n, S)  # written out: the lane layout is part of what is checked

    def center(v, z, fmt):
        o.center(fmt)
        return v - z

    for k in range(L):
        h = []
        for hh in range(H):
            acc = a["enc_b"][hh]
            for j in range(d):
                acc += (a["enc_w"][hh][j] - a["enc_w_z"][hh]) * int(P[k][j])
                o.mul(opw(q.enc_w), (2**input_bits - 1).bit_length() + 1)  # the largest code, signed
                o.add(A["enc"][0])
            h.append(requant([acc], [a["enc_M"][hh]], a["enc_S"][hh], a["h_z"][0], qr["h"], A["enc"], q.h, [1]))
        for i in range(nl):
            act = []
            for hh in range(H):
                u = center(h[hh], a["h_z"][i], q.h)
                zr, zi = a["x_re_z"][i][hh], a["x_im_z"][i][hh]
                ty1 = ty2 = 0
                for n in range(N2):
                    ar = a["A_re"][i][hh][n] - a["A_re_z"][i][hh]
                    ai = a["A_im"][i][hh][n] - a["A_im_z"][i][hh]
                    br = a["B_re"][i][hh][n] - a["B_z"][i][hh]
                    bi = a["B_im"][i][hh][n] - a["B_z"][i][hh]
                    r0 = center(xr[i][hh][n], zr, q.x_re)
                    i0 = center(xi[i][hh][n], zi, q.x_im)
                    o.mul(opw(q.A_re), opw(q.x_re)); o.mul(opw(q.A_im), opw(q.x_im)); o.mul(opw(q.B), opw(q.h))  # noqa: E702
                    nr = requant([ar * r0, ai * i0, br * u], [a["x_re_M"][i][t][hh] for t in range(3)],
                                 a["x_re_S"][i][hh], zr, qr["x_re"], A["x_re"], q.x_re, [1, -1, 1],
                                 offset(k, i, 0, hh, n, a["x_re_S"][i][hh]))
                    o.mul(opw(q.A_re), opw(q.x_im)); o.mul(opw(q.A_im), opw(q.x_re)); o.mul(opw(q.B), opw(q.h))  # noqa: E702
                    ni = requant([ar * i0, ai * r0, bi * u], [a["x_im_M"][i][t][hh] for t in range(3)],
                                 a["x_im_S"][i][hh], zi, qr["x_im"], A["x_im"], q.x_im, [1, 1, 1],
                                 offset(k, i, 1, hh, n, a["x_im_S"][i][hh]))
                    xr[i][hh][n], xi[i][hh][n] = nr, ni
                    cr = center(nr, zr, q.x_re)
                    ci = center(ni, zi, q.x_im)
                    ty1 += (a["C_re"][i][hh][n] - a["C_z"][i][hh]) * cr
                    ty2 += (a["C_im"][i][hh][n] - a["C_z"][i][hh]) * ci
                    o.mul(opw(q.C), opw(q.x_re)); o.mul(opw(q.C), opw(q.x_im))  # noqa: E702
                    if n:
                        o.add(A["y"][0], 2)
                du = (a["D"][i][hh] - a["D_z"][i][hh]) * u
                o.mul(opw(q.D), opw(q.h))
                y = requant([ty1, ty2, du], [a["y_M"][i][t][hh] for t in range(3)], a["y_S"][i][hh],
                            a["y_z"][i], qr["y"], A["y"], q.y, [1, -1, 1])
                act.append(a["gelu_lut"][i][y - qr["y"][0]])
                o.lut()
            g = []
            for j in range(2 * H):
                acc = a["mix_b"][i][j]
                for hh in range(H):
                    acc += (a["mix_w"][i][j][hh] - a["mix_w_z"][i][j]) * (act[hh] - a["act_z"][i])
                    o.mul(opw(q.mix_w), opw(q.act))
                    o.add(A["glu"][0])
                g.append(requant([acc], [a["glu_M"][i][j]], a["glu_S"][i][j], a["glu_z"][i], qr["glu"], A["glu"], q.glu, [1]))
            o.center(q.act, H)  # the H activations are centred once, shared by the 2H rows
            new_h = []
            for hh in range(H):
                sg = a["sig_lut"][i][g[H + hh] - qr["glu"][0]]
                o.lut()
                hc = center(h[hh], a["h_z"][i], q.h)
                gc = center(g[hh], a["glu_z"][i], q.glu)
                o.mul(opw(q.glu), opw(q.sig))
                new_h.append(requant([hc, gc * sg], [a["h_M"][i][t][hh] for t in range(2)], a["h_S"][i][hh],
                                     a["h_z"][i + 1], qr["h"], A["h"], q.h, [1, 1]))
            h = new_h
        for hh in range(H):
            v = center(h[hh], a["h_z"][nl], q.h)
            if cfg.pool == "mean":
                pool[hh] += v
                o.add(A["pool"][0])
            else:
                pool[hh] = v
        if dither:
            o.add(32)  # the step phase advances by WEYL_STEP, mod 2**32
    pooled = [center(requant([pool[hh]], [a["pool_M"][hh]], a["pool_S"][hh], a["pool_z"][0], qr["pool"], A["pool"], q.pool, [1]),
                     a["pool_z"][0], q.pool) for hh in range(H)]
    logits = []
    for c in range(C):
        acc = a["dec_b"][c]
        for hh in range(H):
            acc += (a["dec_w"][c][hh] - a["dec_w_z"][c]) * pooled[hh]
            o.mul(opw(q.dec_w), opw(q.pool))
            o.add(A["logits"][0])
        logits.append(requant([acc], [a["logits_M"][c]], a["logits_S"][c], a["logits_z"][0], qr["logits"], A["logits"], q.logits, [1]))
    o.add(16, C - 1)
    return logits, o
