"""The ``export-c`` command: the integer model as portable C99 (see :mod:`intssm.cexport`).

Registered on the main app by :func:`register` (called from :mod:`intssm.cli`).
"""


from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add ``export-c`` to ``app``."""
    from .cli import JsonOpt, _emit

    @app.command("export-c")
    def export_c(
        model: Annotated[Path, typer.Argument(help="Quantized/float checkpoint or integer artifact (.npz).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the C files into.")],
        as_json: JsonOpt = False,
    ):
        """Write the integer model as C99 (intssm_model.h/.c, example main.c), bit-exact with the simulator."""
        from . import cexport, export, integer

        if model.suffix == ".npz":
            arrays, man = export.load(model)
            cfg, seq_len, counters, iq = man["model_config"], man["seq_len"], man["counters"], man.get("input")
        else:
            im = integer.load(model)
            arrays, cfg, seq_len, counters = im.arrays, im.qm.dp.cfg.to_dict(), im.seq_len, im.counters
            iq = im.iq.to_dict() if im.iq is not None else None
        files = cexport.write_c(arrays, {"model_config": cfg, "seq_len": seq_len, "counters": counters, "input": iq}, out)
        ro = cexport.rodata_bytes_estimate(arrays)
        _emit({"out": str(out), "files": [str(f) for f in files], "rodata_bytes_estimate": ro, "model": str(model)},
              as_json, "\n".join(str(f) for f in files) + f"\n({ro} bytes of constant tables)")
