"""The diffusion process of DiT-ELT, written in logSNR terms (spec section 4): what training needs.

Variance preserving: z_t = α_t·x0 + σ_t·ε with α² = sigmoid(λ), σ² = sigmoid(−λ), λ = log(α²/σ²).
Time t ∈ [0, 1] runs from clean (λ_max) to noise (λ_min). The schedule is the shifted cosine of
"simple diffusion" / SiD2 (Hoogeboom et al.), the loss their sigmoid-weighted MSE. Everything is a
small pure function of λ so the same code serves pixels and latents of any shape; the tests check it
on analytic cases. ``step_grid`` is the time / logSNR grid every sampler walks (``elt.samplers.diffusion``
holds the solvers; ``elt.core.flops`` counts their evaluations on the same grid).

Why not diffusers' schedulers: they are organised around discrete DDPM timesteps and β tables,
while the recipe here is continuous-time in λ (shift, truncation, Jacobian weighting); process and
solvers together are a few hundred lines, and tests/unit/test_solvers.py checks the solvers'
trajectories against diffusers' DDIM, DPM-Solver++ and Heun schedulers on the same logSNR grid.
"""
from __future__ import annotations

import math

import torch

PREDICTIONS = ("x0", "eps", "v")
SPACINGS = ("t", "logsnr")  # sampler.spacing: the step grid is uniform in t, or uniform in logSNR


class ShiftedCosineSchedule:
    """λ(t) = −2·log tan(u(t)) + shift, u linear in t, truncated so λ(0)=λ_max and λ(1)=λ_min.

    The shift moves the whole curve in logSNR: a larger image keeps more signal at the same
    per-pixel noise, so it needs a lower λ (simple diffusion: shift = 2·log(base/resolution)).
    """

    def __init__(self, shift: float = 0.0, logsnr_min: float = -15.0, logsnr_max: float = 15.0):
        if not logsnr_min < logsnr_max:
            raise ValueError(f"model.schedule: need logsnr_min < logsnr_max, got {logsnr_min}, {logsnr_max}")
        self.shift, self.logsnr_min, self.logsnr_max = float(shift), float(logsnr_min), float(logsnr_max)
        # endpoints of the unshifted cosine that land exactly on [λ_min, λ_max] after the shift
        self.u_min = math.atan(math.exp(-0.5 * (self.logsnr_max - self.shift)))
        self.u_max = math.atan(math.exp(-0.5 * (self.logsnr_min - self.shift)))

    @classmethod
    def for_resolution(cls, resolution: int, base_resolution: int = 64, **kw) -> "ShiftedCosineSchedule":
        if resolution < 1 or base_resolution < 1:
            raise ValueError(f"model.schedule: resolutions must be >= 1, got {resolution}, {base_resolution}")
        return cls(shift=2.0 * math.log(base_resolution / resolution), **kw)

    def _u(self, t: torch.Tensor) -> torch.Tensor:
        return self.u_min + t.float() * (self.u_max - self.u_min)

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        lam = -2.0 * torch.log(torch.tan(self._u(t))) + self.shift
        return lam.clamp(self.logsnr_min, self.logsnr_max)  # float32 rounding at the ends only

    def t_of(self, logsnr: torch.Tensor) -> torch.Tensor:
        """The inverse of ``logsnr``: the time the network is told for a grid placed in logSNR."""
        u = torch.atan(torch.exp(-0.5 * (logsnr.double() - self.shift)))
        return ((u - self.u_min) / (self.u_max - self.u_min)).clamp(0.0, 1.0).float()

    def dlogsnr_dt(self, t: torch.Tensor) -> torch.Tensor:
        """dλ/dt (negative): d/du[−2 log tan u] = −4 / sin 2u."""
        return -4.0 * (self.u_max - self.u_min) / torch.sin(2.0 * self._u(t))


def step_grid(schedule: ShiftedCosineSchedule, steps: int, spacing: str = "t",
              device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, λ) of the ``steps`` + 1 grid points of a sampling run, from noise (t = 1, λ_min) to clean.

    ``t``: uniform in time (the paper's grid: most steps where the cosine is flat in λ, at both ends);
    ``logsnr``: uniform in λ (DPM-Solver's grid for few steps: equal exponential-integrator steps)."""
    if spacing not in SPACINGS:
        raise ValueError(f"model.sampler.spacing must be one of {SPACINGS}, got {spacing!r}")
    if spacing == "t":
        ts = torch.linspace(1.0, 0.0, steps + 1, device=device)
        return ts, schedule.logsnr(ts)
    lams = torch.linspace(schedule.logsnr_min, schedule.logsnr_max, steps + 1, device=device)
    return schedule.t_of(lams), lams


def alpha_sigma(logsnr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample [B] values broadcast against a [B, ...] tensor."""
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def diffuse(x0: torch.Tensor, eps: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
    a, s = alpha_sigma(_bc(logsnr, x0))
    return a * x0 + s * eps


def to_x0(pred: torch.Tensor, z: torch.Tensor, logsnr: torch.Tensor, kind: str) -> torch.Tensor:
    """The network output in parameterisation ``kind`` converted to a clean-data estimate."""
    a, s = alpha_sigma(_bc(logsnr, z))
    if kind == "x0":
        return pred
    if kind == "eps":
        return (z - s * pred) / a
    if kind == "v":  # v = α·ε − σ·x0
        return a * z - s * pred
    raise ValueError(f"model.prediction must be one of {PREDICTIONS}, got {kind!r}")


def from_x0(x0: torch.Tensor, z: torch.Tensor, logsnr: torch.Tensor, kind: str) -> torch.Tensor:
    """Inverse of ``to_x0``: what a network of parameterisation ``kind`` outputs for this x0."""
    a, s = alpha_sigma(_bc(logsnr, z))
    if kind == "x0":
        return x0
    eps = (z - a * x0) / s
    if kind == "eps":
        return eps
    if kind == "v":
        return a * eps - s * x0
    raise ValueError(f"model.prediction must be one of {PREDICTIONS}, got {kind!r}")


def sigmoid_loss_weight(logsnr: torch.Tensor, dlogsnr_dt: torch.Tensor, bias: float) -> torch.Tensor:
    """Per-sample weight of ||x0 − x̂0||² for Kingma & Gao's sigmoid weighting (SiD2's loss).

    The weighting is defined on the ε-loss, w(λ) = sigmoid(b − λ), integrated over λ (hence the
    Jacobian −dλ/dt when t is drawn uniformly). Since ||ε − ε̂||² = e^λ·||x0 − x̂0||², the weight on
    the x0 error is −dλ/dt · e^b · sigmoid(λ − b): bounded in λ, so no overflow at either end.
    """
    return -dlogsnr_dt * math.exp(bias) * torch.sigmoid(logsnr - bias)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return (weight * per_sample).mean()
