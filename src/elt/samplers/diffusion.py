"""Diffusion solvers on the logSNR process of ``elt.core.diffusion``, the sampling loop from pure
noise, and DiT-ELT's sampling body.

``sampler.kind``: ``ddpm`` (the paper's ancestral step), ``ddim`` (first-order probability-flow ODE,
exact for a linear x̂0), ``dpmpp_2m`` (DPM-Solver++(2M): data prediction, second-order multistep in
logSNR), ``heun`` (second-order probability-flow ODE in σ/α, EDM's sampler) and ``euler_sde``
(Euler-Maruyama of the reverse SDE in logSNR time). Every solver walks the grid of
``elt.core.diffusion.step_grid`` (``sampler.spacing``) and ends on the last x̂0, a step to λ = ∞; the
evaluations each makes are ``elt.core.flops.solver_evaluations`` (what GFLOPs count). In the noise
terms used below, λ is the logSNR and h = (λ_s − λ_t)/2 the step in log(α/σ).

The model in ``sample`` is duck-typed: ``sampler_config``, ``guided_predict`` (and what early exit
needs: ``embed``, ``backbone``, ``readout``, ``num_classes``), ``x0_of``, ``schedule``,
``autoencoder`` (``latent_shape``, ``decode``), ``ema_weights`` and ``device``.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import trange

from elt.core import diffusion as D
from elt.core.flops import SOLVERS, guidance_scale_at, solver_evaluations
from elt.core.schedules import ScheduleError
from elt.samplers.early_exit import EarlyExit, StepLoops, dit_distance

SAMPLERS = SOLVERS


def noise_like(z: torch.Tensor, generator=None) -> torch.Tensor:
    """The fresh Gaussian noise of a stochastic step (one place, so the tests can fix it)."""
    return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)


def ddpm_step(z, x0, logsnr_t, logsnr_s, generator=None):
    """Ancestral step t → s (λ_s > λ_t): a draw from q(z_s | z_t, x0 = x̂0)."""
    a_t, _ = D.alpha_sigma(logsnr_t)
    a_s, s_s = D.alpha_sigma(logsnr_s)
    ratio = torch.exp(logsnr_t - logsnr_s)  # SNR_t / SNR_s ∈ (0, 1)
    c = -torch.expm1(logsnr_t - logsnr_s)  # σ²_{t|s} / σ²_t
    mean = ratio * (a_s / a_t) * z + a_s * c * x0
    return mean + (s_s * c.sqrt()) * noise_like(z, generator)


def ddim_step(z, x0, logsnr_t, logsnr_s, generator=None):
    """Deterministic step t → s: keep the implied ε̂, move x̂0 to the new noise level."""
    a_t, s_t = D.alpha_sigma(logsnr_t)
    a_s, s_s = D.alpha_sigma(logsnr_s)
    eps = (z - a_t * x0) / s_t
    return a_s * x0 + s_s * eps


def dpmpp_2m_step(z, x0, x0_prev, logsnr_prev, logsnr_t, logsnr_s):
    """DPM-Solver++(2M) step t → s: the exponential integrator of the data-prediction ODE with x̂0
    extrapolated linearly in log(α/σ) from the previous step's (first order, i.e. DDIM, without one).
    z_s = (σ_s/σ_t)·z_t − α_s·(e^{−h} − 1)·D,  D = (1 + 1/2r)·x̂0_t − (1/2r)·x̂0_prev,  r = h_prev/h."""
    _, s_t = D.alpha_sigma(logsnr_t)
    a_s, s_s = D.alpha_sigma(logsnr_s)
    h = 0.5 * (logsnr_s - logsnr_t)
    d = x0
    if x0_prev is not None:
        r = 0.5 * (logsnr_t - logsnr_prev) / h
        d = x0 + (x0 - x0_prev) / (2.0 * r)
    return (s_s / s_t) * z - a_s * torch.expm1(-h) * d


def heun_step(z, x0, z_euler, x0_euler, logsnr_t, logsnr_s):
    """Heun's correction of the probability-flow ODE in x = z/α against σ̃ = σ/α (dx/dσ̃ = ε̂; the
    Euler step in those terms is DDIM): the mean of ε̂ at t and at the Euler prediction at s."""
    a_t, s_t = D.alpha_sigma(logsnr_t)
    a_s, s_s = D.alpha_sigma(logsnr_s)
    eps_t = (z - a_t * x0) / s_t
    eps_s = (z_euler - a_s * x0_euler) / s_s
    return a_s * (z / a_t + (s_s / a_s - s_t / a_t) * 0.5 * (eps_t + eps_s))


def euler_sde_step(z, x0, logsnr_t, logsnr_s, generator=None):
    """Euler-Maruyama of the reverse SDE in logSNR time: dz = [(σ²/2 − 1)·z + α·x̂0]·dλ + σ·dW
    (the VP reverse SDE with dt traded for dλ, whose coefficients stay bounded at both ends)."""
    a_t, s_t = D.alpha_sigma(logsnr_t)
    h = logsnr_s - logsnr_t
    return z + h * ((0.5 * s_t**2 - 1.0) * z + a_t * x0) + (s_t * h.sqrt()) * noise_like(z, generator)


STEPS = {"ddpm": ddpm_step, "ddim": ddim_step, "euler_sde": euler_sde_step}


def check_options(cfg: dict, early_exit_criterion: str | None = None) -> None:
    """A diffusion sampler's settings, refused in one line before any sampling."""
    kind = cfg.get("kind", "ddpm")
    if kind not in SOLVERS:
        raise ValueError(f"model.sampler.kind must be one of {', '.join(SOLVERS)}; got {kind!r}")
    steps = cfg.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"model.sampler.steps must be an integer >= 1, got {steps!r}")
    if kind == "heun" and steps < 2:
        raise ValueError("model.sampler.kind=heun needs steps >= 2 (one step is a plain Euler step: use ddim)")
    if cfg.get("spacing", "t") not in D.SPACINGS:
        raise ValueError(f"model.sampler.spacing must be one of {', '.join(D.SPACINGS)}; got {cfg.get('spacing')!r}")
    interval = cfg.get("cfg_interval")
    if interval is not None:
        ok = (not isinstance(interval, (str, bytes, dict)) and hasattr(interval, "__len__") and len(interval) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval))
        if not ok:
            raise ValueError(f"model.sampler.cfg_interval must be null or [lo, hi] in logSNR, got {interval!r}")
        if interval[0] > interval[1]:
            raise ValueError(f"model.sampler.cfg_interval [lo, hi] needs lo <= hi, got {list(interval)}")
    if early_exit_criterion == "noise" and kind != "ddpm":
        raise ScheduleError(f"early_exit.criterion noise weighs x̂0 by the ancestral step's noise and needs "
                            f"sampler.kind=ddpm, not {kind}; use criterion rel")


def solve(kind: str, x0_at: Callable[[torch.Tensor, int], torch.Tensor], z: torch.Tensor, logsnrs: torch.Tensor,
          generator=None, progress: bool = False) -> torch.Tensor:
    """Run solver ``kind`` from ``z`` over the grid ``logsnrs`` (steps + 1 points, noise first);
    ``x0_at(z, e)`` is the e-th network evaluation's x̂0 (``solver_evaluations`` order). -> the last x̂0."""
    steps = len(logsnrs) - 1
    e = 0

    def evaluate(z):
        nonlocal e
        x0 = x0_at(z, e)
        e += 1
        return x0

    x0_prev = None
    for i in trange(steps, disable=not progress, desc=f"{kind} sampling", leave=False):
        x0 = evaluate(z)
        if i + 1 == steps:
            break
        lt, ls = logsnrs[i], logsnrs[i + 1]
        if kind == "dpmpp_2m":
            z, x0_prev = dpmpp_2m_step(z, x0, x0_prev, logsnrs[i - 1] if i else None, lt, ls), x0
        elif kind == "heun":
            z_euler = ddim_step(z, x0, lt, ls)
            z = heun_step(z, x0, z_euler, evaluate(z_euler), lt, ls)
        else:
            z = STEPS[kind](z, x0, lt, ls, generator)
    return x0


@torch.no_grad()
def sample_loop(
    denoise: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    schedule: D.ShiftedCosineSchedule,
    steps: int,
    kind: str = "ddpm",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    clip_x0: float | None = None,
    progress: bool = False,
    indexed: bool = False,
    spacing: str = "t",
) -> torch.Tensor:
    """Run ``steps`` steps of solver ``kind`` from pure noise on the grid of ``spacing``;
    ``denoise(z, t[B]) -> x̂0`` (``indexed``: ``denoise(z, t[B], e)`` with the evaluation's index in
    ``solver_evaluations(kind, steps)``, for per-step loop schedules and the guidance interval).

    The last step returns x̂0 itself (the posterior at λ_max is x̂0 up to ~e^{−λ_max/2} noise).
    """
    check_options({"kind": kind, "steps": steps, "spacing": spacing})
    steps = int(steps)
    ts, lams = D.step_grid(schedule, steps, spacing, device)
    points = [j for _, j in solver_evaluations(kind, steps)]
    z = torch.randn(shape, generator=generator, device=device)

    def x0_at(z, e):
        t = ts[points[e]].expand(shape[0])
        x0 = (denoise(z, t, e) if indexed else denoise(z, t)).float()
        return x0.clamp(-clip_x0, clip_x0) if clip_x0 is not None else x0

    return solve(kind, x0_at, z, lams, generator, progress)


@torch.no_grad()
def sample(model, labels: torch.Tensor, loops, generator: torch.Generator | None = None,
           progress: bool = False, early_exit=None, stats: dict | None = None, **overrides) -> torch.Tensor:
    """Samples from pure noise with solver ``sampler.kind``. ``loops``: an int (the same L at every
    step) or a loop schedule (elt.core.schedules; a step's evaluations share its entry);
    ``early_exit``: stop each sample's loops once x̂0 stops changing (elt.samplers.early_exit.EarlyExit).
    ``sampler.cfg_interval`` guides only the evaluations whose logSNR lies in [lo, hi]. ``stats``, if a
    dict, receives ``loops`` and ``heads`` [B, evaluations]: the loops each sample ran and the heads read
    at every network evaluation (``elt.core.flops.evaluations`` lists them)."""
    cfg = model.sampler_config(**overrides)
    rule = EarlyExit.from_spec(early_exit)
    check_options(cfg, rule.criterion_for("dit") if rule is not None else None)
    labels = labels.to(model.device)
    shape = (len(labels), *model.autoencoder.latent_shape)
    steps, kind = int(cfg["steps"]), cfg["kind"]
    evals = solver_evaluations(kind, steps)
    run = StepLoops(loops, steps, early_exit, "dit", len(labels), model.device, evals=[i for i, _ in evals])
    lams = D.step_grid(model.schedule, steps, cfg.get("spacing", "t"), model.device)[1]  # sample_loop's grid
    grid = lams.tolist()
    scales = [guidance_scale_at(cfg["cfg_scale"], grid[j], cfg.get("cfg_interval")) for _, j in evals]

    def denoise(z, t, e):
        distance = dit_distance(run.criterion, lams, evals[e][0], steps)
        return run.predict(model, e, {"z": z, "t": t, "labels": labels}, scales[e], distance, model.x0_of)

    with model.ema_weights(bool(cfg["ema"])):
        latents = sample_loop(
            denoise, shape, model.schedule, steps, kind=kind, generator=generator, device=model.device,
            clip_x0=cfg["clip_x0"], progress=progress, indexed=True, spacing=cfg.get("spacing", "t"),
        )
    run.report(stats)
    return model.autoencoder.decode(latents)
