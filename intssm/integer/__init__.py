"""The integer side: the Numba simulator and its kernels, the artifact and C exporters, the cost model, loading a model from any source."""
