"""Diffusion samplers: ancestral DDPM and deterministic DDIM steps on the logSNR process of
``elt.core.diffusion``, the sampling loop from pure noise, and DiT-ELT's sampling body.

A sampler is one step function ``(z, x̂0, λ_t, λ_s, generator) -> z_s``; adding one is adding it to
``STEPS``. The model in ``sample`` is duck-typed: ``sampler_config``, ``guided_predict`` (and what
early exit needs: ``embed``, ``backbone``, ``readout``, ``num_classes``), ``x0_of``, ``schedule``,
``autoencoder`` (``latent_shape``, ``decode``), ``ema_weights`` and ``device``.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import trange

from elt.core import diffusion as D
from elt.core.schedules import ScheduleError
from elt.samplers.early_exit import StepLoops, dit_distance


def ddpm_step(z, x0, logsnr_t, logsnr_s, generator=None):
    """Ancestral step t → s (λ_s > λ_t): a draw from q(z_s | z_t, x0 = x̂0)."""
    a_t, _ = D.alpha_sigma(logsnr_t)
    a_s, s_s = D.alpha_sigma(logsnr_s)
    ratio = torch.exp(logsnr_t - logsnr_s)  # SNR_t / SNR_s ∈ (0, 1)
    c = -torch.expm1(logsnr_t - logsnr_s)  # σ²_{t|s} / σ²_t
    mean = ratio * (a_s / a_t) * z + a_s * c * x0
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    return mean + (s_s * c.sqrt()) * noise


def ddim_step(z, x0, logsnr_t, logsnr_s, generator=None):
    """Deterministic step t → s: keep the implied ε̂, move x̂0 to the new noise level."""
    a_t, s_t = D.alpha_sigma(logsnr_t)
    a_s, s_s = D.alpha_sigma(logsnr_s)
    eps = (z - a_t * x0) / s_t
    return a_s * x0 + s_s * eps


STEPS = {"ddpm": ddpm_step, "ddim": ddim_step}
SAMPLERS = tuple(STEPS)


def time_grid(steps: int, device) -> torch.Tensor:
    """The ``steps`` + 1 times of a sampling run, uniform from t = 1 (noise) to 0 (clean)."""
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


@torch.no_grad()
def sample_loop(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple[int, ...],
    schedule: D.ShiftedCosineSchedule,
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
    step = STEPS[kind]
    ts = time_grid(int(steps), device)
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


@torch.no_grad()
def sample(model, labels: torch.Tensor, loops, generator: torch.Generator | None = None,
           progress: bool = False, early_exit=None, stats: dict | None = None, **overrides) -> torch.Tensor:
    """Ancestral DDPM (or DDIM) from pure noise. ``loops``: an int (the same L at every step) or a
    loop schedule (elt.core.schedules); ``early_exit``: stop each sample's loops once x̂0 stops
    changing (elt.samplers.early_exit.EarlyExit). ``stats``, if a dict, receives ``loops`` and
    ``heads`` [B, steps]: the loops each sample ran and the heads read at every step."""
    cfg = model.sampler_config(**overrides)
    labels = labels.to(model.device)
    shape = (len(labels), *model.autoencoder.latent_shape)
    steps, cfg_scale = int(cfg["steps"]), float(cfg["cfg_scale"])
    run = StepLoops(loops, max(steps, 0), early_exit, "dit", len(labels), model.device)
    if run.criterion == "noise" and cfg["kind"] != "ddpm":
        raise ScheduleError("early_exit.criterion noise needs the ddpm sampler (it weighs x̂0 by the step's noise)")
    lams = model.schedule.logsnr(time_grid(max(steps, 0), model.device))  # sample_loop's grid

    def denoise(z, t, i):
        distance = dit_distance(run.criterion, lams, i, steps)
        return run.predict(model, i, {"z": z, "t": t, "labels": labels}, cfg_scale, distance, model.x0_of)

    with model.ema_weights(bool(cfg["ema"])):
        latents = sample_loop(
            denoise, shape, model.schedule, steps, kind=cfg["kind"], generator=generator,
            device=model.device, clip_x0=cfg["clip_x0"], progress=progress, indexed=True,
        )
    run.report(stats)
    return model.autoencoder.decode(latents)
