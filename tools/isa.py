"""Which vector instruction set a benchmark runs on, and forcing a narrower one.

``--isa avx2`` makes Numba generate AVX2 code (``NUMBA_CPU_NAME=haswell`` and an explicit feature
list without AVX-512: the name alone keeps the host's AVX-512 features) and caps Torch's kernels
at AVX2 (``ATEN_CPU_CAPABILITY=avx2``), so that a machine with AVX-512 measures what a laptop runs.
Both must be set before Numba and Torch are imported: :func:`force_from_argv` sets them and
re-executes the script once.
"""

from __future__ import annotations

import os
import platform
import sys

AVX2_FEATURES = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,+lzcnt,+mmx,+movbe,+pclmul,+popcnt,"
                 "+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,"
                 "-avx512f,-avx512bw,-avx512cd,-avx512dq,-avx512vl,-avx512vnni,-avx512bf16,-avx512ifma,-avx512vbmi")
FORCED = {"avx2": {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": AVX2_FEATURES, "ATEN_CPU_CAPABILITY": "avx2"}}


def force_from_argv() -> str:
    """Apply ``--isa avx2`` (or ``--isa native``, the default) from the command line before any
    import of Numba or Torch; returns the choice."""
    name = "native"
    if "--isa" in sys.argv:
        i = sys.argv.index("--isa")
        name = sys.argv[i + 1] if i + 1 < len(sys.argv) else ""
        if name not in ("native", *FORCED):
            sys.exit(f"error: --isa must be native or {', '.join(FORCED)}, got {name!r}")
    env = FORCED.get(name, {})
    if any(os.environ.get(k) != v for k, v in env.items()):
        os.environ.update(env)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    return name


def describe() -> dict:
    """The host CPU's vector features and the code Numba and Torch generate here."""
    import llvmlite.binding as ll
    import numba

    host = ll.get_host_cpu_features()
    vec = [f for f in ("avx512f", "avx512vl", "avx512dq", "avx2", "fma", "neon", "sve") if host.get(f, False)]
    feats = os.environ.get("NUMBA_CPU_FEATURES", "")
    numba_vec = ("avx512" if "avx512f" in vec and "-avx512f" not in feats else "avx2" if "avx2" in vec or "+avx2" in feats else
                 "neon" if "neon" in vec else "scalar/sse")
    out = {"machine": platform.machine(), "host_cpu": ll.get_host_cpu_name(), "host_vector_features": vec,
           "numba_cpu": numba.config.CPU_NAME or ll.get_host_cpu_name(), "numba_vector_isa": numba_vec}
    try:
        import torch

        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 (Torch not needed for the simulator benchmark)
        pass
    return out


def line(d: dict) -> str:
    t = f", Torch {d['torch_cpu_capability']}" if "torch_cpu_capability" in d else ""
    return (f"ISA: host {d['host_cpu']} ({', '.join(d['host_vector_features']) or 'no vector extensions'}); "
            f"Numba generates {d['numba_vector_isa']} code for {d['numba_cpu']}{t}")
