"""C export: the integer model as portable C99 that runs bit-exactly like the simulator.

:func:`write_c` turns an integer model (:class:`~intssm.datapath.intmodel.IntModel`, validated once where
it was made, by :func:`intssm.datapath.layout.validate`) into

* ``<prefix>_model.h`` -- the library API: dimensions, the state struct and its size, the entry
  points (reset, step, the streaming readout, classify, state access, and for float-data models
  the input path), ``extern "C"`` for C++; every name starts with the prefix (default ``intssm``);
* ``<prefix>_model.c`` -- every constant as a ``static const`` table of the narrowest C integer type
  that holds its values, and the step / readout functions, which follow ``_run_one`` in
  :mod:`intssm.integer.sim` site by site (same centred operands, same int64 accumulators, same
  rounding and saturation, same counters); the input path from :mod:`intssm.integer.cinput`;
* ``main.c`` -- a tiny example: a sequence of any length on stdin, logits and class on stdout;
* ``README.md`` -- the integration steps and build flags (:mod:`intssm.integer.cdoc`).

This module is the entry point (:func:`check`, :func:`write_c`, :func:`c_storage`); the jobs live in
:mod:`~intssm.integer.ctext` (C literals, types, names), :mod:`~intssm.integer.cstorage` (the
storage plan: how each table and the state are held), :mod:`~intssm.integer.csites` (each site's C
arithmetic, from :mod:`intssm.datapath.bounds`), :mod:`~intssm.integer.cheader`,
:mod:`~intssm.integer.cstep` (the model functions) and :mod:`~intssm.integer.csource` (the ``.c``
file and ``main.c``). The generated model code includes ``<stdint.h>`` only and
calls no library function: no floating-point arithmetic, no ``malloc``, no mutable globals
(``.bss`` and ``.data`` are empty; all state is in the caller's :c:type:`intssm_state`).
Portability notes are in the header comment of the generated ``.c``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from intssm.datapath import layout
from intssm import outputs
from intssm.errors import IntssmError
from intssm.integer.csites import INT32_LIMIT, SiteWidth, site_widths  # noqa: F401
from intssm.integer.cstorage import (MAX_PACKED_WIDTH, MODE_RECORD, STATE_LAYOUTS, TABLES, WINDOW_PAD,  # noqa: F401
                                     Plan, Store, declared_range, pack_bits, plan, rodata_bytes_estimate,
                                     state_bytes, state_size, table_layout, width_of)
from intssm.integer.cstep import shared_update  # noqa: F401
from intssm.integer.ctext import PREFIX_RE, c_initializer, c_int, check_prefix, ctype_for, file_names  # noqa: F401
from intssm.integer.cheader import header
from intssm.integer.csource import MAIN_MARK, main_c, source  # noqa: F401

H_FILE, C_FILE, MAIN_FILE = "intssm_model.h", "intssm_model.c", "main.c"  # the files of the default prefix


def check(m):
    """(dimensions, :func:`site_widths`) of the model ``m`` (an
    :class:`~intssm.datapath.intmodel.IntModel`, validated where it was made) for the C export;
    IntssmError if it cannot be exported."""
    from intssm.datapath.intmodel import require

    cfg, qcfg, seq_len = require(m, "the C export").cfg, m.qcfg, m.seq_len
    if not 1 <= seq_len < 2**30:
        raise IntssmError(f"C export: seq_len must lie in 1..2^30 - 1, got {seq_len}")
    widths = site_widths(m)
    N2 = cfg.d_state // 2
    events = cfg.d_model + cfg.n_layers * (2 * cfg.d_model * N2 + 4 * cfg.d_model)  # clamps per step, at most
    pool_bound = (seq_len if cfg.pool == "mean" else 1) * qcfg.h.centered_bound
    qr = m.arrays["qrange"]
    dims = {**{f"QR_{k.upper()}": (int(qr[j, 0]), int(qr[j, 1])) for j, k in enumerate(layout.QRANGE_ROWS)},
            "H": cfg.d_model, "N2": N2, "LAYERS": cfg.n_layers, "D_IN": cfg.d_input,
            "D_OUT": cfg.d_output, "MEAN_POOL": int(cfg.pool == "mean"), "SEQ_LEN": seq_len,
            "N_COUNTERS": m.n_counters, "EXACT_STEPS": (2**32 - 1) // events,
            "POOL_T": "int32_t" if pool_bound <= INT32_LIMIT else "int64_t"}
    dims["MAX_STEPS"] = max_steps(cfg.pool == "mean", seq_len, qcfg.h.centered_bound, dims["POOL_T"])
    return dims, widths


#: The step counter of the state saturates here; :func:`max_steps` stays below it.
STEPS_SATURATE = 2**32 - 1


def max_steps(mean_pool: bool, seq_len: int, h_bound: int, pool_t: str) -> int:
    """Steps after a reset for which the C state's arithmetic is proved: any number below the
    saturating step counter with last-step pooling; with mean pooling, as many as the pooling
    accumulator (``pool_t``) holds at |h'| <= ``h_bound`` per step, and (int64) as keep the
    streaming readout's numerator 2 |acc| L + t below 2^63."""
    if not mean_pool:
        return STEPS_SATURATE
    n = INT32_LIMIT // h_bound if pool_t == "int32_t" else 2**62 // (2 * seq_len) // h_bound
    n = min(n, STEPS_SATURATE - 1)
    if n < seq_len:
        raise IntssmError(f"C export: the pooling accumulator cannot hold {seq_len} steps")
    return n



def write_c(m, out_dir: Path, state_layout: str = "packed", prefix: str = "intssm", adc_scale=None) -> list[Path]:
    """Write ``<prefix>_model.h``, ``<prefix>_model.c``, ``main.c`` and ``README.md`` into ``out_dir``
    (all or none); returns the paths written. An existing ``main.c`` that is not the generated
    example is kept. Every symbol, type and macro of the header starts with ``prefix`` (``PREFIX``):
    models exported with different prefixes link into one program.

    ``m``: the :class:`~intssm.datapath.intmodel.IntModel` (its input quantizer, for float data,
    is described in the header and gets a C input path). ``adc_scale``: for a float-data
    model, one float32 scale per input channel of int16 ADC codes (adds ``<prefix>_input_codes_adc``).
    """
    from intssm.integer import cdoc

    ns = check_prefix(prefix)
    dims, widths = check(m)
    a, qcfg = m.arrays, m.qcfg
    iq = m.input  # the input quantizer (RAW_UINT8 for raw uint8 inputs)
    if adc_scale is not None:
        from intssm.integer import cinput

        if not m.float_input:
            raise IntssmError("--adc-scale is for models of float data; this one takes raw uint8 inputs")
        adc_scale = [float(v) for v in adc_scale]
        if len(adc_scale) == 1:
            adc_scale *= dims["D_IN"]
        cinput.adc_thresholds(m.input, np.array(adc_scale))  # checked before any file is written
    out_dir = outputs.check_dir(out_dir, what="C export directory")
    p = plan(a, qcfg, state_layout)
    dither = qcfg.state_rounding == "dither"
    dims["X_BYTES"] = state_bytes(p, dims["LAYERS"] * dims["H"] * dims["N2"])
    dims["STATE_BYTES"], dims["STATE_ALIGN"] = state_size(p, dims, dither)
    h_name, c_name = file_names(ns)
    files = {h_name: header(ns, dims, layout.counter_names(dims["LAYERS"]), widths, p, dither, iq, adc_scale),
             c_name: source(ns, a, p, widths, dims, iq, adc_scale),
             MAIN_FILE: main_c(ns, m.float_input),
             cdoc.README: cdoc.readme(ns, dims, p.flash_bytes, m.float_input)}
    main = out_dir / MAIN_FILE
    if main.is_file() and not main.read_text(errors="replace").startswith(MAIN_MARK):
        del files[MAIN_FILE]  # the user's own main.c (the example is only created): kept
        print(f"keeping {main} (not the generated example)", file=sys.stderr)
    return outputs.write_texts({out_dir / name: text for name, text in files.items()})  # all or none


def c_storage(m, state_layout: str = "packed") -> dict:
    """Bytes the C export occupies: flash = its constant data (.rodata: :attr:`Plan.flash_bytes`,
    alignment padding not included), RAM = one ``intssm_state`` (the only mutable memory of the
    model; .data and .bss are empty; :func:`state_size`). The stack a step needs comes on top
    (measured by ``intssm export-c --target``). ``m``: an :class:`~intssm.datapath.intmodel.IntModel`."""
    dims, _ = check(m)
    p = plan(m.arrays, m.qcfg, state_layout)
    size, _ = state_size(p, dims, m.qcfg.state_rounding == "dither")
    return {"c_flash_bytes": p.flash_bytes, "c_ram_bytes": size}
