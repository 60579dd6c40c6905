"""Shared test setup: Hypothesis profiles, and :func:`load_tool` for the scripts in ``tools/``.

``ci`` (default) keeps the whole run within a few minutes on 2 cores; ``thorough`` runs thousands
of examples: ``HYPOTHESIS_PROFILE=thorough pytest``.
"""

import importlib.util
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=30, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", max_examples=3000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# the integer-model cache (intssm.sources) of this test run, never the user's: set before any
# test starts a CLI subprocess, which inherits it
os.environ["INTSSM_CACHE_DIR"] = tempfile.mkdtemp(prefix="intssm-cache-")


def load_tool(name: str):
    """The script ``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
