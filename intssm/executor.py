"""Where independent runs execute: one interface, local processes by default, Ray on request.

An executor takes a picklable module-level function and a list of keyword-argument dicts and
yields ``(index, result)`` as runs finish, in completion order. The study runner and
``intssm search`` submit through it, so they run unchanged on one laptop or on a Ray cluster:

    with get_executor("local", workers=2) as ex:          # concurrent.futures process pool
        for i, r in ex.map_unordered(fn, [{"a": 1}, {"a": 2}]): ...
    with get_executor("ray", address="auto") as ex: ...  # ray.init(address=...); None = local Ray

Every run is pinned to one Torch / OpenMP / Numba thread by :func:`one_thread`, so ``workers``
runs use ``workers`` cores, whichever executor runs them.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from intssm.errors import IntssmError

EXECUTORS = ("local", "ray")


def one_thread():
    """Pin this process to one thread before the numeric libraries start their pools."""
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(k, "1")
    import torch

    torch.set_num_threads(1)


def _call(fn, kwargs):
    one_thread()
    return fn(**kwargs)


class LocalExecutor:
    """A pool of ``workers`` processes (spawned: no inherited thread pools or JIT state)."""

    def __init__(self, workers: int = 2):
        if workers < 1:
            raise IntssmError(f"--workers must be at least 1, got {workers}")
        self.workers = workers
        self._pool = None

    def __enter__(self):
        import multiprocessing as mp

        self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
        return self

    def __exit__(self, *exc):
        self._pool.shutdown(wait=True, cancel_futures=True)

    def map_unordered(self, fn, kwargs_list):
        futs = {self._pool.submit(_call, fn, kw): i for i, kw in enumerate(kwargs_list)}
        pending = set(futs)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield futs[f], f.result()


class RayExecutor:
    """Runs on a Ray cluster: ``ray.init(address=address)``, or a local Ray instance for None.

    Needs the optional extra: ``pip install "intssm[cluster]"``. Each run is a Ray task asking
    for one CPU, so Ray's scheduler spreads the runs over the cluster's cores.
    """

    def __init__(self, address: str | None = None, workers: int | None = None):
        try:
            import ray
        except ImportError:
            raise IntssmError('--executor ray needs Ray: pip install "intssm[cluster]"') from None
        self.ray, self.address, self.workers = ray, address, workers
        self._started = False

    def __enter__(self):
        ray = self.ray
        if not ray.is_initialized():
            kw = {"address": self.address} if self.address else {"num_cpus": self.workers} if self.workers else {}
            try:
                ray.init(include_dashboard=False, log_to_driver=False, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise IntssmError(f"could not connect to Ray at {self.address!r}: {e}") from None
            self._started = True
        return self

    def __exit__(self, *exc):
        if self._started:
            self.ray.shutdown()

    def map_unordered(self, fn, kwargs_list):
        ray = self.ray
        task = ray.remote(num_cpus=1)(_call)
        refs = {task.remote(fn, kw): i for i, kw in enumerate(kwargs_list)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                yield refs[r], ray.get(r)


def get_executor(name: str = "local", workers: int = 2, address: str | None = None):
    """``local`` (process pool of ``workers``) or ``ray`` (cluster at ``address``, local if None)."""
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(address, workers if not address else None)
    raise IntssmError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
