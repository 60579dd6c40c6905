"""``intssm.sim.simulate``, the simulator's entry point, under its original import path; the
simulator lives in :mod:`intssm.integer.sim`."""

from intssm.integer.sim import simulate  # noqa: F401
