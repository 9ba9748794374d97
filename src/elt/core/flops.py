"""Analytic compute of sampling: the x-axis of every quality-vs-GFLOPs figure and the unit of a budget.

FLOPs count a multiply-add as 2. A family supplies ``flops_per_eval(loops)`` (one network evaluation of
one sample) and ``flops_per_exit()`` (one more read-out of the shared head); everything else is here."""
from __future__ import annotations

import math
from typing import Sequence


def evals_per_step(cfg_scale: float) -> int:
    """Network evaluations per sampling step: classifier-free guidance runs the conditional and the
    null-class batch (one doubled batch), so any scale other than 1 costs two."""
    return 1 if float(cfg_scale) == 1.0 else 2


def evals_factor(sampler: dict) -> int:
    return evals_per_step(sampler.get("cfg_scale", 1.0))


def gflops_per_sample(model, loops: int | Sequence[int], sampler: dict) -> float:
    """Analytic GFLOPs one sample costs: at a fixed loop count ``loops``, one network evaluation times
    the evaluations of every sampling step (the sampler's own defaults filled in); under a resolved
    plan, ``flops_per_eval(L_k)`` summed over the steps. Both double under guidance."""
    if isinstance(loops, int):
        return model.flops_per_eval(loops) * model.network_evals_per_sample(**sampler) / 1e9
    return sum(model.flops_per_eval(int(L)) for L in loops) * evals_factor(sampler) / 1e9


def measured_gflops_per_sample(model, loops_run, heads_run, sampler: dict) -> float:
    """GFLOPs per sample of what an early-exit sampler actually ran: per sample and step the
    network at the loops it ran, plus the shared head once more for every extra exit it read out
    (``stats["loops"]`` / ``stats["heads"]`` of ``model.sample``), averaged over the samples."""
    loops_run, heads_run = loops_run.double(), heads_run.double()
    per_loop = model.flops_per_eval(2) - model.flops_per_eval(1)
    base = model.flops_per_eval(1) - per_loop  # embeddings + one head, no loop
    total = base * loops_run.shape[1] + per_loop * loops_run.sum(1) + model.flops_per_exit() * (heads_run - 1).sum(1)
    return float(total.mean()) * evals_factor(sampler) / 1e9


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
