"""Analytic compute of sampling: the x-axis of every quality-vs-GFLOPs figure and the unit of a budget.

FLOPs count a multiply-add as 2. A family supplies ``flops_per_eval(loops)`` (one network evaluation of
one sample) and ``flops_per_exit()`` (one more read-out of the shared head); everything else is here.

A diffusion model (one with a ``schedule``) is sampled by a solver whose evaluations this module lists
(``solver_evaluations``: Heun evaluates twice per step) on the grid of ``elt.core.diffusion.step_grid``,
each guided or not by ``guidance_scale_at`` (the guidance interval), so that every count, budget and
figure reads the same list (``evaluations``)."""
from __future__ import annotations

import math
from typing import Sequence

from elt.core import diffusion as D

# sampler.kind of a diffusion model: the paper's ancestral step, DDIM, DPM-Solver++(2M), Heun's
# second-order probability-flow ODE, Euler-Maruyama of the reverse SDE (elt.samplers.diffusion)
SOLVERS = ("ddpm", "ddim", "dpmpp_2m", "heun", "euler_sde")


def evals_per_step(cfg_scale: float) -> int:
    """Network evaluations per sampling step: classifier-free guidance runs the conditional and the
    null-class batch (one doubled batch), so any scale other than 1 costs two."""
    return 1 if float(cfg_scale) == 1.0 else 2


def guidance_scale_at(cfg_scale: float, logsnr: float, interval=None) -> float:
    """The guidance scale of one evaluation at ``logsnr``: ``cfg_scale`` inside the guidance interval
    [lo, hi] (Kynkäänniemi et al., 2024; None = everywhere), else 1 (one plain conditional pass)."""
    if interval is None:
        return float(cfg_scale)
    lo, hi = interval
    return float(cfg_scale) if float(lo) <= float(logsnr) <= float(hi) else 1.0


def solver_evaluations(kind: str, steps: int) -> list[tuple[int, int]]:
    """(step, grid point) of every network evaluation of a ``steps``-step run of solver ``kind``.
    Every solver evaluates each grid point 0..steps-1 once and ends on the last x̂0 (a step to
    λ = ∞); Heun also evaluates the end of every step but the last (which is that Euler step)."""
    if kind == "heun":
        return [e for i in range(steps - 1) for e in ((i, i), (i, i + 1))] + [(steps - 1, steps - 1)]
    return [(i, i) for i in range(steps)]


def evaluations(model, sampler: dict) -> list[tuple[int, int]]:
    """(step, passes) of every network evaluation of one sample under ``sampler`` (the model's
    defaults filled in): passes is 2 where guidance doubles the batch, else 1."""
    cfg = model.sampler_config(**sampler)
    steps, scale = int(cfg["steps"]), cfg.get("cfg_scale", 1.0)
    schedule = getattr(model, "schedule", None)
    if not isinstance(schedule, D.ShiftedCosineSchedule):  # not a diffusion model: one evaluation a step
        return [(k, evals_per_step(scale)) for k in range(steps)]
    interval = cfg.get("cfg_interval")
    lams = D.step_grid(schedule, steps, cfg.get("spacing", "t"))[1].tolist() if interval is not None else None
    return [(i, evals_per_step(guidance_scale_at(scale, lams[j] if lams else math.nan, interval)))
            for i, j in solver_evaluations(cfg.get("kind", "ddpm"), steps)]


def gflops_per_sample(model, loops: int | Sequence[int], sampler: dict) -> float:
    """Analytic GFLOPs one sample costs: ``flops_per_eval(L)`` of every network evaluation, at a
    fixed loop count ``loops`` or at each step's entry of a resolved plan, doubled where guided."""
    evals = evaluations(model, sampler)
    if isinstance(loops, int):
        return model.flops_per_eval(loops) * sum(p for _, p in evals) / 1e9
    if len(loops) != max((k for k, _ in evals), default=-1) + 1:
        raise ValueError(f"a loop plan of {len(loops)} steps for a sampler of {len(evals)} evaluations' steps")
    return sum(model.flops_per_eval(int(loops[k])) * p for k, p in evals) / 1e9


def measured_gflops_per_sample(model, loops_run, heads_run, sampler: dict) -> float:
    """GFLOPs per sample of what an early-exit sampler actually ran: per sample and network
    evaluation the network at the loops it ran, plus the shared head once more for every extra exit
    it read out (``stats["loops"]`` / ``stats["heads"]`` of ``model.sample``, one column per
    evaluation), each doubled where guided, averaged over the samples."""
    loops_run, heads_run = loops_run.double(), heads_run.double()
    passes = loops_run.new_tensor([p for _, p in evaluations(model, sampler)])
    if len(passes) != loops_run.shape[1]:
        raise ValueError(f"stats of {loops_run.shape[1]} evaluations for a sampler of {len(passes)}")
    per_loop = model.flops_per_eval(2) - model.flops_per_eval(1)
    base = model.flops_per_eval(1) - per_loop  # embeddings + one head, no loop
    total = (base + per_loop * loops_run + model.flops_per_exit() * (heads_run - 1)) * passes
    return float(total.sum(1).mean()) / 1e9

def training_flops_per_sample(model) -> float:
    """Analytic FLOPs of one training sample: the forward ×3 (the backward costs two forwards: gradients of
    activations and of weights). The forward is one evaluation at Lmax plus, under ILSD, the shared head
    once more at the student's exit (the student is a prefix of the teacher's pass). Model FLOPs, as MFU
    counts them: activation checkpointing's recomputed forward is not included."""
    forward = model.flops_per_eval(model.Lmax) + (model.flops_per_exit() if model.ilsd_active else 0.0)
    return 3.0 * forward


def tokens_per_sample(model) -> int:
    """Sequence positions the backbone runs per sample: DiT's patch grid, MaskGIT's token grid."""
    grid = getattr(model, "grid", None)
    return int(math.prod(grid)) if grid is not None else int(model.tokenizer.num_tokens)
