"""The float model's configuration: sizes and training-time options, no Torch.

Read by the Torch model (:mod:`intssm.training.model`), the datapath description (:mod:`intssm.datapath.qspec`),
the integer layout and every loader. :data:`LIMITS` bounds every size before anything is built,
so a hostile file cannot make a loader allocate gigabytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from intssm.errors import IntssmError

#: Largest accepted value of each size: far above any edge model, small enough that building or
#: loading one fits a workstation's memory.
LIMITS = {"d_input": 4096, "d_output": 4096, "d_model": 4096, "d_state": 4096, "n_layers": 64}
#: Largest per-layer array (layers x channels x modes or mixing rows): 2**26 elements, 512 MiB in int64.
MAX_LAYER_ELEMENTS = 2**26


@dataclass
class ModelConfig:
    d_input: int = 1  # features per time step (1 pixel for sMNIST)
    d_output: int = 10  # classes
    d_model: int = 16  # H, channels of the residual stream
    d_state: int = 64  # N; N/2 complex modes are stored (conjugate halving)
    n_layers: int = 1  # S4D blocks
    pool: str = "mean"  # 'mean' | 'last'
    dt_min: float = 1e-3  # log dt ~ U[log dt_min, log dt_max]
    dt_max: float = 1e-1
    dropout: float = 0.0  # dropout after the activation (training only)
    # lower bound g on 1 - |Abar| of every mode, kept by projection after each optimizer step
    # (0 = none). A b-bit state with round-to-nearest cannot decay by less than half a step, so
    # modes with 1 - |Abar| < 2**-b freeze (dead zone); g >= 2**-b keeps every mode able to decay.
    min_decay: float = 0.0

    def validate(self) -> "ModelConfig":
        for f, hi in LIMITS.items():
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise IntssmError(f"model config: {f} must be a positive integer, got {v!r}")
            if v > hi:
                raise IntssmError(f"model config: {f} = {v} exceeds intssm's limit {hi} "
                                  f"(intssm.datapath.modelconfig.LIMITS; raise it there for a real model this large)")
        size = self.n_layers * self.d_model * max(self.d_state // 2, 2 * self.d_model)
        if size > MAX_LAYER_ELEMENTS:
            raise IntssmError(f"model config: {self.n_layers} layer(s) x d_model {self.d_model} x "
                              f"max(d_state/2, 2 d_model) = {size} weights per array exceeds intssm's limit "
                              f"{MAX_LAYER_ELEMENTS} (intssm.datapath.modelconfig.MAX_LAYER_ELEMENTS)")
        if self.d_state % 2:
            raise IntssmError(f"model config: d_state must be even (conjugate pairs), got {self.d_state}")
        if self.pool not in ("mean", "last"):
            raise IntssmError(f"model config: pool must be 'mean' or 'last', got {self.pool!r}")
        for f in ("dt_min", "dt_max", "dropout"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise IntssmError(f"model config: {f} must be a finite number, got {v!r}")
        if isinstance(self.min_decay, bool) or not isinstance(self.min_decay, (int, float)) or not 0 <= self.min_decay < 1:
            raise IntssmError(f"model config: min_decay must be a number in [0, 1), got {self.min_decay!r}")
        if not 0 <= self.dropout < 1:
            raise IntssmError(f"model config: dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.dt_min <= self.dt_max:
            raise IntssmError("model config: need 0 < dt_min <= dt_max")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise IntssmError(f"model config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise IntssmError(f"model config: unknown keys {sorted(unknown)}")
        return cls(**d).validate()

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "paper-small": ModelConfig(d_model=16, d_state=64, n_layers=1),  # the paper's model, ~3.9k params
    "base": ModelConfig(d_model=64, d_state=64, n_layers=4, dropout=0.1),
    "tiny": ModelConfig(d_model=4, d_state=8, n_layers=1),  # for tests
}
