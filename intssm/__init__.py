"""intssm: small S4D state-space models in 4-16-bit integers, simulated bit-exactly."""

__version__ = "0.1.0"
