"""Float S4D (Gu et al. 2022) with explicit B, in convolution mode and recurrent step mode.

Symbols follow the paper: H = d_model channels, N = d_state, of which N/2 complex modes are kept
(conjugate-pair halving, hence the factor 2 in ``y = 2 Re(C x)``), L = sequence length.

    A_n  = -exp(log_A_re) + i A_im          S4D-Lin init: A_n = -1/2 + i pi n
    dt   = exp(log_dt),  log dt ~ U[log dt_min, log dt_max]
    Abar = exp(dt A)                        zero-order hold
    Bbar = (Abar - 1) / A * B               zero-order hold, B explicit (init 1)
    x_k  = Abar x_{k-1} + Bbar u_k          recurrent mode, what the hardware runs
    y_k  = 2 Re(C x_k) + D u_k
    K_l  = 2 Re(sum_n C_n Bbar_n Abar_n^l)  convolution mode: y = K * u + D u (FFT)

Backbone (per layer, no norm): ``h <- h + GLU(W gelu(S4D(h)) + b)``; encoder ``Linear(d_input, H)``
on ``u`` (``p / 255`` for raw uint8 codes); mean (or last-step) pooling over each sequence's own
length; decoder ``Linear(H, d_output)``.

Design note -- every block has an exact integer realisation (docs/datapath.md):
the encoder, GLU mixing and decoder are integer matrix products whose accumulators are proved
bounded when the datapath is built; GELU and sigmoid act on low-bit codes, so they become lookup
tables; the residual sum is requantized once and saturated; mean pooling is an integer sum and one
requantisation. No LayerNorm: its per-step division and square root have no cheap exact integer
form, and the paper's model has no norm either.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from intssm.datapath.modelconfig import PRESETS, ModelConfig  # noqa: F401  (the model's configuration, re-exported)


class S4D(nn.Module):
    """Diagonal SSM over H channels with N/2 complex modes each; B, C complex, D real."""

    def __init__(self, H: int, N: int, dt_min: float = 1e-3, dt_max: float = 1e-1, seed_gen=None):
        super().__init__()
        N2 = N // 2
        g = seed_gen
        log_dt = torch.rand(H, generator=g) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)  # (H)
        self.log_A_re = nn.Parameter(torch.log(0.5 * torch.ones(H, N2)))  # (H N2)
        self.A_im = nn.Parameter(math.pi * torch.arange(N2).float().repeat(H, 1))  # (H N2)
        self.B = nn.Parameter(torch.stack([torch.ones(H, N2), torch.zeros(H, N2)], -1))  # (H N2 2)
        self.C = nn.Parameter(torch.randn(H, N2, 2, generator=g) * math.sqrt(0.5))  # (H N2 2)
        self.D = nn.Parameter(torch.randn(H, generator=g))  # (H)

    SSM_PARAMS = ("log_dt", "log_A_re", "A_im", "B")  # trained at a low lr, no weight decay

    def continuous(self, dtype=None):
        """(dt (H), A (H N2) complex), at ``dtype`` (default: the parameters')."""
        cast = (lambda p: p) if dtype is None else (lambda p: p.to(dtype))  # noqa: E731
        dt = torch.exp(cast(self.log_dt))
        A = torch.complex(-torch.exp(cast(self.log_A_re)), cast(self.A_im))
        return dt, A

    @torch.no_grad()
    def project(self, min_decay: float):
        """Enforce 1 - |Abar| >= min_decay for every mode: |Abar| = exp(-exp(log_A_re) dt), so
        log_A_re >= log(-log(1 - min_decay)) - log dt (a clamp, i.e. projected gradient descent)."""
        if min_decay > 0:
            floor = math.log(-math.log1p(-min_decay)) - self.log_dt[:, None]
            self.log_A_re.copy_(torch.maximum(self.log_A_re, floor.to(self.log_A_re.dtype)))

    def discrete(self, dtype=None):
        """Zero-order hold: (Abar, Bbar, C) each (H N2) complex, D (H); computed at ``dtype``
        (the parameters' own by default; the datapath quantizes the float64 values)."""
        dt, A = self.continuous(dtype)
        Abar = torch.exp(A * dt[:, None])
        B, C = (p.contiguous() if dtype is None else p.to(dtype).contiguous() for p in (self.B, self.C))
        Bbar = (Abar - 1) / A * torch.view_as_complex(B)
        return Abar, Bbar, torch.view_as_complex(C), self.D if dtype is None else self.D.to(dtype)

    def kernel(self, L: int) -> torch.Tensor:
        """K (H L) = 2 Re(sum_n C_n Bbar_n Abar_n^l), computed as exp(l dt A)."""
        dt, A = self.continuous()
        Abar, Bbar, C, _ = self.discrete()
        dtA = A * dt[:, None]  # (H N2)
        l = torch.arange(L, device=dtA.device, dtype=dtA.real.dtype)
        V = torch.exp(dtA[..., None] * l)  # (H N2 L)
        return 2 * torch.einsum("hn,hnl->hl", C * Bbar, V).real

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Convolution mode. u (B H L) -> y (B H L)."""
        L = u.shape[-1]
        K = self.kernel(L)  # (H L)
        n = 2 * L
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(K, n=n), n=n)[..., :L]
        return y + u * self.D[:, None]

    def step(self, u: torch.Tensor, x: torch.Tensor, disc=None):
        """Recurrent mode. u (B H), x (B H N2) complex -> (y (B H), x_next)."""
        Abar, Bbar, C, D = disc if disc is not None else self.discrete()
        x = Abar * x + Bbar * u[..., None]
        y = 2 * torch.einsum("hn,bhn->bh", C, x).real + D * u
        return y, x

    def default_state(self, batch: int, dtype=torch.complex64):
        return torch.zeros(batch, self.log_A_re.shape[0], self.log_A_re.shape[1], dtype=dtype)


class S4DBlock(nn.Module):
    """h <- h + GLU(W gelu(S4D(h)) + b)."""

    def __init__(self, cfg: ModelConfig, g):
        super().__init__()
        self.ssm = S4D(cfg.d_model, cfg.d_state, cfg.dt_min, cfg.dt_max, g)
        self.mix = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def mixing(self, y):
        """y (..., H) after the SSM -> residual update (..., H)."""
        z = self.mix(self.drop(F.gelu(y)))
        return F.glu(z, dim=-1)


class S4DModel(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg.validate()
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(seed)
            self.encoder = nn.Linear(cfg.d_input, cfg.d_model)
            self.layers = nn.ModuleList([S4DBlock(cfg, g) for _ in range(cfg.n_layers)])
            self.decoder = nn.Linear(cfg.d_model, cfg.d_output)
        self.project()

    def project(self):
        """Apply the config's constraints to the weights (``min_decay``); train calls it after each step."""
        for layer in self.layers:
            layer.ssm.project(self.cfg.min_decay)

    def forward(self, u: torch.Tensor, mode: str = "conv", lengths: torch.Tensor | None = None) -> torch.Tensor:
        """u (B L d_input) float -> logits (B d_output).

        ``lengths`` (B,): sequence b ends at step lengths[b]; the steps after it are padding. Every
        block is causal, so padding cannot reach an earlier step; the pooling reads valid steps only
        (the mean over the first lengths[b] steps, or step lengths[b] - 1)."""
        if mode == "recurrent":
            return self.forward_recurrent(u, lengths)
        h = self.encoder(u)  # (B L H)
        for layer in self.layers:
            y = layer.ssm(h.transpose(1, 2)).transpose(1, 2)  # (B L H)
            h = h + layer.mixing(y)
        return self.decoder(self.pool(h, lengths))

    def pool(self, h, lengths=None):
        """h (B L H) -> (B H): mean over each sequence's valid steps, or its last valid step."""
        if lengths is None:
            return h.mean(1) if self.cfg.pool == "mean" else h[:, -1]
        lengths = torch.as_tensor(lengths, device=h.device).long()
        if self.cfg.pool == "last":
            return h[torch.arange(h.shape[0], device=h.device), lengths - 1]
        mask = (torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None]).to(h.dtype)  # (B L)
        return (h * mask[..., None]).sum(1) / lengths[:, None].to(h.dtype)

    def forward_recurrent(self, u: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The same function one time step at a time (what the hardware runs)."""
        B, L, _ = u.shape
        cdtype = torch.complex128 if u.dtype == torch.float64 else torch.complex64
        discs = [layer.ssm.discrete() for layer in self.layers]
        xs = [layer.ssm.default_state(B, cdtype) for layer in self.layers]
        hs = []
        for k in range(L):
            h = self.encoder(u[:, k])
            for i, layer in enumerate(self.layers):
                y, xs[i] = layer.ssm.step(h, xs[i], discs[i])
                h = h + layer.mixing(y)
            hs.append(h)
        return self.decoder(self.pool(torch.stack(hs, 1), lengths))

    def param_groups(self, lr: float, ssm_lr: float, weight_decay: float):
        ssm, other = [], []
        for name, p in self.named_parameters():
            (ssm if name.split(".")[-1] in S4D.SSM_PARAMS else other).append(p)
        return [
            {"params": ssm, "lr": ssm_lr, "weight_decay": 0.0},
            {"params": other, "lr": lr, "weight_decay": weight_decay},
        ]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
