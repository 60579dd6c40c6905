"""intssm: small S4D state-space models in 4-16-bit integers, simulated bit-exactly.

From Python: ``intssm.load``, ``intssm.load_data``, ``intssm.run``, ``intssm.export_c``
(:mod:`intssm.api`, imported on first use so that ``import intssm`` stays light)."""

__version__ = "0.1.0"

_API = ("Result", "load", "load_data", "run", "export_c")


def __getattr__(name):
    if name in _API:
        from intssm import api

        return getattr(api, name)
    raise AttributeError(f"module 'intssm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
