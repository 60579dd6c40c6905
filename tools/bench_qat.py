"""QAT speed: one training step with the fused quantized scan vs two plain Torch loops vs float
convolution-mode training, measured side by side in one run and extrapolated to an sMNIST epoch.

    python tools/bench_qat.py [--preset paper-small] [--d-model H] [--n-layers N] [--batch-size 64] [--batches 3] [--threads T] [--fused-only] [--isa avx2] [--json]
    python tools/bench_qat.py --agree 500     # the textbook loop's accuracy next to the integer model's
    python tools/bench_qat.py --profile [--d-model 64 --n-layers 1]   # where a fused step's time goes

``--d-model 64 --n-layers 1`` is the d_model-64 reference model (one layer, d_model 64, d_state 64,
batch 64); ``--fused-only`` skips the plain and textbook loops, which take minutes per step there.
The fused step and float training are timed alternately, batch by batch, so that their ratio holds
on a machine whose load changes.

The two loops:

- **plain loop**: this package's own Torch quantized model (``QuantS4D`` without its fused
  kernels): the exact integer datapath, every site but the state vectorised over time, only the
  state recurrence a Python loop of 784 steps;
- **textbook loop** (:func:`textbook_forward`): fake quantization as Torch's QAT tools do it, the
  way a straightforward QAT loop is written: float32, the whole model stepped once per time step (as
  :meth:`intssm.training.model.S4DModel.forward_recurrent`), real and imaginary state parts and every
  activation through ``torch.fake_quantize_per_*_affine`` (one fused op each, straight-through with
  the clip mask), with the scales of the same PTQ calibration. It is a speed baseline only: it
  rounds in float32, so its numbers are close to, not equal to, the integer datapath's.

All of them use the same cores: Torch's intra-op threads and Numba's threads are both set to
``--threads`` (default: every core Numba sees), so float training is not handicapped against the
parallel scan kernels.

The plain Torch loop keeps every step's tensors for autograd: for ``--preset base`` use
``--batch-size 16`` on a 24 GB machine (batch 64 needs more than 24 GB and is killed).
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import replace
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isa import describe, force_from_argv, line  # noqa: E402  (tools/isa.py)

ISA = force_from_argv()  # before Numba and Torch are imported

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def textbook_forward(m, tq, P):
    """Logits of the float32 model ``m`` with fake quantization at every datapath site, one time
    step at a time; ``tq`` the PTQ quantizers (``Datapath.tq``), ``P`` raw pixels (B, L, d)."""
    import torch
    import torch.nn.functional as F

    def fq(x, name, axis=None):  # per-tensor (activations) or per-channel on ``axis`` (the state)
        q = tq[name]
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(x, float(q.scale[0]), int(q.zero[0]), q.qmin, q.qmax)
        return torch.fake_quantize_per_channel_affine(x, torch.tensor(q.scale, dtype=torch.float32),
                                                      torch.tensor(q.zero, dtype=torch.int32), axis, q.qmin, q.qmax)

    def wq(w, name):  # weights: per tensor, at the site's bit width (once per forward)
        qmax = 2 ** (tq[name].fmt.bits - 1) - 1
        s = (w.detach().abs().max() / qmax).item() or 1.0
        return torch.fake_quantize_per_tensor_affine(w, s, 0, -qmax, qmax)

    u = P.float() / 255.0
    B, L, _ = u.shape
    enc_w = wq(m.encoder.weight, "enc_w")
    per = []
    for i, layer in enumerate(m.layers):
        Abar, Bbar, C, D = layer.ssm.discrete()
        p = f"l{i}."
        per.append((wq(Abar.real, p + "A_re"), wq(Abar.imag, p + "A_im"), wq(Bbar.real, p + "B"), wq(Bbar.imag, p + "B"),
                    wq(C.real, p + "C"), wq(C.imag, p + "C"), wq(D, p + "D"), wq(layer.mix.weight, p + "mix_w"), layer.mix.bias))
    xr = [torch.zeros(B, *w[0].shape) for w in per]
    xi = [torch.zeros(B, *w[0].shape) for w in per]
    pool = 0
    for k in range(L):
        h = fq(u[:, k] @ enc_w.T + m.encoder.bias, "h0")
        for i, (Ar, Ai, Br, Bi, Cr, Ci, D, W, b) in enumerate(per):
            p = f"l{i}."
            hn = h[..., None]
            xr[i], xi[i] = (fq(Ar * xr[i] - Ai * xi[i] + Br * hn, p + "x_re", 1),
                            fq(Ar * xi[i] + Ai * xr[i] + Bi * hn, p + "x_im", 1))
            y = fq(2 * ((Cr * xr[i]).sum(-1) - (Ci * xi[i]).sum(-1)) + D * h, p + "y")
            g = fq(fq(F.gelu(y), p + "act") @ W.T + b, p + "glu")
            h = fq(h + g[..., :W.shape[1]] * fq(torch.sigmoid(g[..., W.shape[1]:]), p + "sig"), p + "h")
        pool = pool + h
    return fq(m.decoder(fq(pool / L, "pool")), "logits")


def agreement(n: int, ckpt: str, config: str) -> dict:
    """How close the textbook loop is to the integer datapath: accuracy of the float model, of the
    textbook loop and of the integer model (PTQ with ``config``, 64 calibration sequences) on the
    first ``n`` test sequences, and how often the textbook loop and the integer model agree."""
    import torch

    from intssm import data
    from intssm.training import checkpoint
    from intssm.training.ptq import ptq
    from intssm.datapath.qspec import PRESETS as QP

    m, _ = checkpoint.load(ckpt)
    qm, _ = ptq(m.double(), QP[config], torch.from_numpy(data.load("smnist", "train", 64).as_float()).double())
    te = data.load("smnist", "test", n)
    P, y = torch.from_numpy(te.x), torch.from_numpy(te.y)
    with torch.no_grad():
        pt = textbook_forward(copy.deepcopy(qm.model).float(), qm.dp.tq, P).argmax(1)
        pq = qm(P)[0].argmax(1)
        pf = copy.deepcopy(m).float()(torch.from_numpy(te.as_float())).argmax(1)
    acc = lambda p: float((p == y).double().mean())  # noqa: E731
    return {"n": n, "float": acc(pf), "textbook": acc(pt), "integer": acc(pq), "agree": float((pt == pq).double().mean())}


def profile_steps(step, n: int, what: str, top: int = 12) -> None:
    """Self CPU time per operator and per step over ``n`` steps (after one warm-up step). The fused
    kernels appear as QuantScan / QuantScanBackward (the state scan, intssm.training.scan) and LayerTail /
    LayerTailBackward (each layer's pointwise steps, intssm.training.pointwise); the rest are Torch
    operators (encoder, weight codes, pooling, decoder, optimizer). Times include the profiler's
    own overhead."""
    from torch.profiler import ProfilerActivity, profile

    step(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(1, n + 1):
            step(i)
    ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ev) / n / 1e3
    print(f"{what}: {total:.1f} ms per step under the profiler")
    for e in ev[:top]:
        ms = e.self_cpu_time_total / n / 1e3
        print(f"  {e.key:32s} {ms:8.1f} ms  {100 * ms / total:5.1f}%")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper-small")
    ap.add_argument("--d-model", type=int, default=0, help="override the preset's d_model")
    ap.add_argument("--n-layers", type=int, default=0, help="override the preset's number of layers")
    ap.add_argument("--config", default="paper-hetero")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--epoch", action="store_true",
                    help="time the fused and the float step over a whole epoch (every training sequence) "
                         "instead of --batches; the two loops are still timed on one batch")
    ap.add_argument("--threads", type=int, default=0, help="threads for Torch and Numba alike (0: all cores)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--fused-only", action="store_true", help="only the fused step and float training (skip the slow loops)")
    ap.add_argument("--agree", type=int, default=0, metavar="N",
                    help="instead: accuracy of the textbook loop vs the integer model on N test sequences")
    ap.add_argument("--agree-model", default=str(ROOT / "data/checkpoints/paper-small-fp32.pt"))
    ap.add_argument("--agree-config", default="w8a8-state12")
    ap.add_argument("--profile", action="store_true",
                    help="instead: where a fused QAT step spends its time (torch.profiler over --batches steps, by operator)")
    ap.add_argument("--isa", default="native", choices=["native", "avx2"],
                    help="avx2: AVX2 code for Numba and Torch even on an AVX-512 machine (tools/isa.py)")
    a = ap.parse_args()
    import numba
    import torch
    import torch.nn.functional as F

    threads = a.threads or numba.config.NUMBA_NUM_THREADS
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    if a.agree:
        r = agreement(a.agree, a.agree_model, a.agree_config)
        print(json.dumps(r) if a.json else
              f"{a.agree_config} on {r['n']} test sequences: float {r['float']:.2%}, textbook loop {r['textbook']:.2%}, "
              f"integer model {r['integer']:.2%}; textbook and integer predictions agree on {r['agree']:.2%}")
        return
    from intssm import data
    from intssm.training.model import PRESETS, S4DModel
    from intssm.training.qat import configure
    from intssm.training.ptq import ptq
    from intssm.datapath.qspec import PRESETS as QP

    mcfg = replace(PRESETS[a.preset], **({"d_model": a.d_model} if a.d_model else {}),
                   **({"n_layers": a.n_layers} if a.n_layers else {}))
    tr = data.load("smnist", "train", None if a.epoch else a.batch_size * (a.batches + 1))
    if a.epoch:
        a.batches = len(tr.y) // a.batch_size - 1  # one more batch warms up
    x, y = torch.from_numpy(tr.x), torch.from_numpy(tr.y)
    xf = torch.from_numpy(tr.as_float())
    B = a.batch_size
    fm = S4DModel(mcfg, seed=0)
    qm, _ = ptq(S4DModel(mcfg, seed=0).double(), QP[a.config], xf[:B].double())
    opt_q = torch.optim.Adam(configure(qm, "continuous"), 1e-4)
    opt_f = torch.optim.Adam(fm.parameters(), 1e-4)

    def q_step(i):
        lg, _ = qm(x[i * B:(i + 1) * B], ste=True)
        loss = F.cross_entropy(qm.real_logits(lg), y[i * B:(i + 1) * B])
        opt_q.zero_grad()
        loss.backward()
        opt_q.step()

    if a.profile:
        return profile_steps(q_step, a.batches, f"{a.preset} (d_model {mcfg.d_model}, {mcfg.n_layers} layer(s)) / {a.config}, "
                             f"batch {B}, {threads} threads")

    def q_forward(i):  # forward only, keeping the graph as training does
        lg, _ = qm(x[i * B:(i + 1) * B], ste=True)
        F.cross_entropy(qm.real_logits(lg), y[i * B:(i + 1) * B])

    def f_step(i):
        loss = F.cross_entropy(fm(xf[i * B:(i + 1) * B]), y[i * B:(i + 1) * B])
        opt_f.zero_grad()
        loss.backward()
        opt_f.step()

    tm = copy.deepcopy(qm.model).float()
    opt_t = torch.optim.Adam(tm.parameters(), 1e-4)

    def t_step(i):
        loss = F.cross_entropy(textbook_forward(tm, qm.dp.tq, x[i * B:(i + 1) * B]), y[i * B:(i + 1) * B])
        opt_t.zero_grad()
        loss.backward()
        opt_t.step()

    def t_forward(i):
        F.cross_entropy(textbook_forward(tm, qm.dp.tq, x[i * B:(i + 1) * B]), y[i * B:(i + 1) * B])

    def timed(fn, n):
        fn(0)  # warm-up (JIT, allocator)
        t = time.perf_counter()
        for i in range(1, n + 1):
            fn(i)
        return (time.perf_counter() - t) / n

    def side_by_side(f1, f2, n):
        """Mean seconds per call of f1 and f2, called alternately on the same batches (a change in
        the machine's load hits both)."""
        f1(0)
        f2(0)
        t1 = t2 = 0.0
        for i in range(1, n + 1):
            t = time.perf_counter()
            f1(i)
            t1 += time.perf_counter() - t
            t = time.perf_counter()
            f2(i)
            t2 += time.perf_counter() - t
        return t1 / n, t2 / n

    steps = (a.batches + 1) if a.epoch else 50000 / B
    qm.fused_scan = qm.fused_tail = True
    t_fused, t_float = side_by_side(q_step, f_step, a.batches)
    t_naive = t_naive_fwd = t_text = t_text_fwd = None  # --fused-only: not measured
    if not a.fused_only:
        qm.fused_scan = qm.fused_tail = False
        t_naive = timed(q_step, 1)
        t_naive_fwd = timed(q_forward, 1)
        t_text = timed(t_step, 1)
        t_text_fwd = timed(t_forward, 1)
    res = {"d_model": mcfg.d_model, "n_layers": mcfg.n_layers, "batch_size": B, "threads": threads, "fused_s_per_step": t_fused, "naive_s_per_step": t_naive, "naive_forward_s": t_naive_fwd, "float_conv_s_per_step": t_float,
           "textbook_s_per_step": t_text, "textbook_forward_s": t_text_fwd,
           "fused_epoch_s": t_fused * steps, "float_conv_epoch_s": t_float * steps,
           "naive_epoch_s": None if t_naive is None else t_naive * steps,
           "textbook_epoch_s": None if t_text is None else t_text * steps,
           "fused_over_float": t_fused / t_float, "isa": describe()}
    ratio = lambda a, b: None if a is None else a / b  # noqa: E731
    res |= {"naive_over_fused": ratio(t_naive, t_fused), "textbook_over_fused": ratio(t_text, t_fused),
            "naive_over_float": ratio(t_naive, t_float), "textbook_over_float": ratio(t_text, t_float)}
    if a.json:
        print(json.dumps(res))
        return
    print(line(res["isa"]))
    print(f"{a.preset} (d_model {mcfg.d_model}, {mcfg.n_layers} layer(s)) / {a.config}, batch {B}, {threads} threads (Torch and Numba), epoch = {steps * B:,.0f} sequences{' (measured)' if a.epoch else ''}:")
    rows = (("float_conv", "float, convolution mode"), ("fused", "QAT, fused quantized scan"), ("naive", "QAT, plain Torch loop"),
            ("textbook", "QAT, textbook loop"))
    for k, lab in rows[:2] if a.fused_only else rows:
        print(f"  {lab:28s} {res[k + '_s_per_step']:7.3f} s/step -> {res[k + '_epoch_s']:7.0f} s/epoch  ({res[k + '_s_per_step'] / t_float:5.2f}x float)")
    if a.fused_only:
        print(f"  fused is {res['fused_over_float']:.2f}x the time of float training (measured alternately, step by step)")
        return
    print(f"  forward only: plain loop {t_naive_fwd:.3f} s/batch, textbook loop {t_text_fwd:.3f} s/batch")
    print(f"  fused is {res['naive_over_fused']:.1f}x faster than the plain loop, {res['textbook_over_fused']:.1f}x faster than the "
          f"textbook loop, and {res['fused_over_float']:.2f}x the time of float training (measured alternately, step by step)")


if __name__ == "__main__":
    main()
