"""The diffusion process of DiT-ELT, written in logSNR terms (spec section 4).

Variance preserving: z_t = α_t·x0 + σ_t·ε with α² = sigmoid(λ), σ² = sigmoid(−λ), λ = log(α²/σ²).
Time t ∈ [0, 1] runs from clean (λ_max) to noise (λ_min). The schedule is the shifted cosine of
"simple diffusion" / SiD2 (Hoogeboom et al.), the loss their sigmoid-weighted MSE, the samplers
ancestral DDPM and deterministic DDIM. Everything is a small pure function of λ so the same code
serves pixels and latents of any shape; the tests check it on analytic cases.

Why not diffusers' schedulers: they are organised around discrete DDPM timesteps and β tables,
while the recipe here is continuous-time in λ (shift, truncation, Jacobian weighting); the whole
process is ~150 lines and the project avoids a heavy dependency for it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import trange

PREDICTIONS = ("x0", "eps", "v")
SAMPLERS = ("ddpm", "ddim")


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

    def dlogsnr_dt(self, t: torch.Tensor) -> torch.Tensor:
        """dλ/dt (negative): d/du[−2 log tan u] = −4 / sin 2u."""
        return -4.0 * (self.u_max - self.u_min) / torch.sin(2.0 * self._u(t))


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


def ddpm_step(z, x0, logsnr_t, logsnr_s, generator=None):
    """Ancestral step t → s (λ_s > λ_t): a draw from q(z_s | z_t, x0 = x̂0)."""
    a_t, _ = alpha_sigma(logsnr_t)
    a_s, s_s = alpha_sigma(logsnr_s)
    ratio = torch.exp(logsnr_t - logsnr_s)  # SNR_t / SNR_s ∈ (0, 1)
    c = -torch.expm1(logsnr_t - logsnr_s)  # σ²_{t|s} / σ²_t
    mean = ratio * (a_s / a_t) * z + a_s * c * x0
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    return mean + (s_s * c.sqrt()) * noise


def ddim_step(z, x0, logsnr_t, logsnr_s, generator=None):
    """Deterministic step t → s: keep the implied ε̂, move x̂0 to the new noise level."""
    a_t, s_t = alpha_sigma(logsnr_t)
    a_s, s_s = alpha_sigma(logsnr_s)
    eps = (z - a_t * x0) / s_t
    return a_s * x0 + s_s * eps


@torch.no_grad()
def sample_loop(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    schedule: ShiftedCosineSchedule,
    steps: int,
    kind: str = "ddpm",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    clip_x0: float | None = None,
    progress: bool = False,
    indexed: bool = False,
) -> torch.Tensor:
    """Run ``steps`` steps on a uniform time grid from t=1 to 0; ``denoise(z, t[B]) -> x̂0``
    (``indexed``: ``denoise(z, t[B], i)`` with the step index, for per-step loop schedules).

    The last step returns x̂0 itself (the posterior at λ_max is x̂0 up to ~e^{−λ_max/2} noise).
    """
    if kind not in SAMPLERS:
        raise ValueError(f"model.sampler.kind must be one of {SAMPLERS}, got {kind!r}")
    if int(steps) < 1:
        raise ValueError(f"model.sampler.steps must be >= 1, got {steps}")
    step = ddpm_step if kind == "ddpm" else ddim_step
    ts = torch.linspace(1.0, 0.0, int(steps) + 1, device=device)
    lams = schedule.logsnr(ts)
    z = torch.randn(shape, generator=generator, device=device)
    for i in trange(int(steps), disable=not progress, desc=f"{kind} sampling", leave=False):
        t = ts[i].expand(shape[0])
        x0 = (denoise(z, t, i) if indexed else denoise(z, t)).float()
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        if i + 1 < int(steps):
            z = step(z, x0, lams[i], lams[i + 1], generator)
    return x0
