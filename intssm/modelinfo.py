"""What a model is and costs, from any source: the artifact's tensors (``intssm inspect``), its
exact memory (``intssm memory``) and the work of one step with measured saturation rates
(``intssm profile``).

Each function loads, computes and returns ``(result, text)``: the JSON-able result and the table
a person reads; the command prints one or the other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from intssm import outputs
from intssm.errors import IntssmError
from intssm.progress import progress_bar


def inspect(path) -> tuple[dict, str]:
    """The artifact's manifest, each array's shape and value range, and each quantizer's bits,
    scale and real range."""
    from intssm.datapath.qspec import QFormat
    from intssm.integer import export

    m, man = export.load_with_manifest(path)
    rows = [{"name": k, "shape": list(v.shape), "min": int(v.min()) if v.size else 0, "max": int(v.max()) if v.size else 0}
            for k, v in m.arrays.items()]
    tens = man["tensors"]
    res = {"manifest": {k: v for k, v in man.items() if k != "tensors"}, "arrays": rows, "tensors": tens}
    lines = [f"{path}: format {man['format']} v{man['format_version']}, datapath v{man['datapath_version']}, "
             f"seq_len {man['seq_len']}, model {man['model_config']}",
             f"{'array':12s} {'shape':>14s} {'min':>12s} {'max':>12s}"]
    lines += [f"{r['name']:12s} {str(tuple(r['shape'])):>14s} {r['min']:>12d} {r['max']:>12d}" for r in rows]
    lines.append(f"\n{'quantizer':12s} {'bits':>4s} {'sym':>4s} {'per-ch':>6s} {'scale (min..max)':>24s} {'real range':>22s}")
    for k, t in tens.items():
        sc = np.asarray(t["scale"])
        b, sym = t["bits"], t["symmetric"]
        f = QFormat(b, sym)
        z = np.asarray(t["zero"])
        lo, hi = float((sc * (f.qmin - z)).min()), float((sc * (f.qmax - z)).max())
        lines.append(f"{k:12s} {b:>4d} {'y' if sym else 'n':>4s} {'y' if t['per_channel'] else 'n':>6s} "
                     f"{sc.min():>11.4g}..{sc.max():<11.4g} {lo:>10.4g}..{hi:<10.4g}")
    return res, "\n".join(lines)


def memory(path) -> tuple[dict, str]:
    """Exact memory of the integer model of ``path`` (flash: constants; RAM: state and buffers)
    against float32, and the bytes of its C export (:func:`intssm.integer.cexport.c_storage`)."""
    from intssm import sources
    from intssm.integer import cost
    from intssm.integer.cexport import c_storage

    lm = sources.load(path)  # one read: config, quantization and arrays
    m = lm.model
    r = cost.memory(m.cfg, m.qcfg, m.seq_len) | c_storage(m)
    lines = [f"{lm.source}", f"{'tensor':18s} {'kind':11s} {'count':>7s} {'bits':>5s} {'bytes':>9s}"]
    lines += [f"{x['name']:18s} {x['kind']:11s} {x['count']:>7d} {x['bits_each']:>5d} {x['bits'] / 8:>9.1f}" for x in r["rows"]]
    lines += [f"\nflash {r['flash_bytes']} B + RAM {r['ram_bytes']} B = {r['bytes']} B;  float32: "
              f"{r['fp32_flash_bytes']} + {r['fp32_ram_bytes']} = {r['fp32_bytes']} B;  reduction {r['reduction']:.2f}x",
              f"weights and biases only: {r['weights_bytes']} B vs {r['fp32_weights_bytes']} B float32 "
              f"({r['weights_reduction']:.2f}x)",
              f"as exported to C (intssm export-c; sub-byte and odd widths packed): constants {r['c_flash_bytes']} B "
              f"(.rodata, before alignment) vs {r['flash_bytes']} B accounted; state {r['c_ram_bytes']} B "
              f"(sizeof(intssm_state)) vs {r['ram_bytes']} B accounted; code and stack: intssm export-c --target cortex-m4"]
    return r | {"model": lm.source}, "\n".join(lines)


def profile(path, seq: str | None = None, limit: int = 100, plot=None, show: bool = True, loading=None) -> tuple[dict, str]:
    """Exact integer work of one recurrent step of ``path``'s model (by kind and width), traffic,
    energy against float32 (:func:`intssm.integer.cost.profile`), and with ``limit`` > 0 the
    saturation rates measured on that many ``seq`` test sequences (None: the model's own dataset); ``plot``: a PNG of operations
    and bytes per part. A float checkpoint is described with the default preset without
    calibrating; the saturation rates need its PTQ."""
    from contextlib import nullcontext

    from intssm import data, sources
    from intssm.datapath import layout
    from intssm.integer import cost

    if limit < 0:
        raise IntssmError(f"--limit must be >= 0, got {limit}")
    if plot is not None:
        outputs.check_file(plot, inputs=[path, seq], what="--plot", suffix=".png")
    cfg, qcfg, L, name, input_bits = sources.describe(path)
    prof = cost.profile(cfg, qcfg, L, input_bits)
    parts = prof["parts"]
    mem = cost.memory(cfg, qcfg, L)
    prof["memory"] = {k: v for k, v in mem.items() if k != "rows"}
    if limit:
        lm = sources.load(path)
        seq = seq or lm.dataset or "smnist"
        ds = data.load(seq, "test", limit)
        lm.check_data(ds)
        P = lm.input_codes(ds)
        with (loading or nullcontext)():
            sources.run(lm.model, P[:1], lengths=ds.lengths[:1])
        with progress_bar("saturation rates", len(ds), enabled=show) as adv:
            _, cnts, _ = sources.run(lm.model, P, progress=adv, lengths=ds.lengths)
        events = layout.counter_events(cfg, int(ds.lengths.sum()), len(ds))
        prof["saturation_rates"] = {n: {"saturations": int(c), "events": events[n], "rate": int(c) / events[n]}
                                    for n, c in zip(lm.model.counters, cnts.sum(0))}
    if plot:
        plot_profile(parts, mem, plot)
        prof["plot"] = str(plot)
    lines = [f"{name}: one recurrent step, then per sequence of {L} steps"]
    kinds = sorted({k for v in parts.values() for k in v})
    w = {p: max(10, len(p) + 2) for p in parts}
    lines.append(f"{'operation':22s}" + "".join(f"{p:>{w[p]}s}" for p in parts) + f"{'step':>10s}{'sequence':>13s}")
    for k in kinds:
        row = f"{k:22s}" + "".join(f"{parts[p].get(k, 0):>{w[p]}d}" for p in parts)
        lines.append(row + f"{prof['step_ops'].get(k, 0):>10d}{prof['sequence_ops'].get(k, 0):>13d}")
    t = prof["traffic_bits"]
    lines.append(f"\nper step: reads {t['read_const_bits']} const + {t['read_lut_bits']} LUT + {t['read_state_bits']} state "
                 f"+ {t['read_act_bits']} activation bits; writes {t['write_state_bits']} state + {t['write_act_bits']} activation bits")
    lines.append(f"state held between steps: {t['state_bits_held']} bits; memory: flash {mem['flash_bytes']} B, RAM {mem['ram_bytes']} B")
    e, f = prof["energy_pj_per_step"], prof["fp32"]["energy_pj_per_step"]
    lines.append(f"energy per step (Horowitz 45 nm): integer {e['total'] / 1000:.2f} nJ (ops {e['ops'] / 1000:.2f}, memory "
                 f"{e['memory'] / 1000:.2f}); float32 {f['total'] / 1000:.2f} nJ; ratio {prof['energy_ratio_fp32_over_int']:.1f}x")
    if limit:
        lines.append("\nsaturation / clip rates measured on " + f"{limit} {seq} test sequences:")
        lines += [f"  {k:10s} {r['saturations']:>10d} / {r['events']:<12d} = {r['rate']:.2e}"
                  for k, r in prof["saturation_rates"].items()]
    return prof | {"model": name}, "\n".join(lines)


def plot_profile(parts: dict, mem: dict, path: Path):
    """A PNG of operations per step by part and kind, beside the bytes by kind of tensor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    kinds = sorted({k for v in parts.values() for k in v})
    bottom = np.zeros(len(parts))
    for k in kinds:
        vals = np.array([parts[p].get(k, 0) for p in parts], dtype=float)
        a1.bar(list(parts), vals, bottom=bottom, label=k)
        bottom += vals
    a1.set_ylabel("operations per step")
    a1.set_title("integer operations per step, by part")
    a1.legend(fontsize=7)
    kinds_m = {}
    for r in mem["rows"]:
        kinds_m[r["kind"]] = kinds_m.get(r["kind"], 0) + r["bits"] / 8
    a2.bar(list(kinds_m), list(kinds_m.values()), color="tab:gray")
    a2.set_ylabel("bytes")
    a2.set_title(f"memory: {mem['bytes']} B (float32 {mem['fp32_bytes']} B)")
    a2.tick_params(axis="x", rotation=30)
    outputs.write_png(path, fig)
