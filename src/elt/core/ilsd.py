"""Intra-Loop Self-Distillation, written once for every model family.

One forward pass to Lmax yields the teacher (exit Lmax) and the student (exit Lint, a prefix of
the teacher's trajectory). The loss is

    L = L_gt(F_Lmax, y) + λ·L_gt(F_Lint, y) + (1 − λ)·L_dist(F_Lint, stopgrad(F_Lmax))

A family supplies only its task loss and its distillation loss; the callback owns λ.
"""
from __future__ import annotations

import math
from typing import Callable

import lightning as L
import torch


def draw_lint(Lmin: int, Lmax: int, generator: torch.Generator | None = None) -> int:
    """Student exit, uniform over Lmin <= Lint < Lmax (strictly below the teacher)."""
    if not 1 <= Lmin < Lmax:
        raise ValueError(f"ILSD needs 1 <= Lmin < Lmax, got Lmin={Lmin}, Lmax={Lmax}")
    return int(torch.randint(Lmin, Lmax, (1,), generator=generator).item())


def ilsd_objective(
    teacher_pred,
    student_pred,
    task_loss: Callable[[object], torch.Tensor],
    distill_loss: Callable[[object, object], torch.Tensor],
    lam: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The spec's formula; with ``student_pred=None`` it is vanilla looped training."""
    teacher_gt = task_loss(teacher_pred)
    if student_pred is None:
        return teacher_gt, {"teacher_gt": teacher_gt.detach()}
    student_gt = task_loss(student_pred)
    student_dist = distill_loss(student_pred, detach(teacher_pred))
    loss = teacher_gt + lam * student_gt + (1.0 - lam) * student_dist
    parts = {"teacher_gt": teacher_gt.detach(), "student_gt": student_gt.detach(), "student_dist": student_dist.detach()}
    return loss, parts


def detach(pred):
    if isinstance(pred, torch.Tensor):
        return pred.detach()
    if isinstance(pred, dict):
        return {k: detach(v) for k, v in pred.items()}
    if isinstance(pred, (list, tuple)):
        return type(pred)(detach(v) for v in pred)
    return pred


def lambda_at(progress: float, schedule: str = "linear", span: float = 1.0, start: float = 0.0) -> float:
    """λ(progress) for progress in [0, 1]: 1 until ``start``, decays to 0 over ``span`` of training.

    The paper found results insensitive to the rate as long as the decay is gradual; ``cosine``
    and ``constant`` (λ = 1, no distillation) are offered for ablations.
    """
    if schedule == "constant":
        return 1.0
    if span <= 0:
        raise ValueError(f"ilsd.span must be > 0, got {span}")
    t = min(max((progress - start) / span, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - t
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"ilsd.schedule must be one of linear, cosine, constant; got {schedule!r}")


class ILSDCallback(L.Callback):
    """Sets ``pl_module.ilsd_lambda`` every step from training progress and logs λ and Lint."""

    def __init__(self, schedule: str = "linear", span: float = 1.0, start: float = 0.0):
        lambda_at(0.0, schedule, span, start)  # validate now, not at step 1
        self.schedule, self.span, self.start = schedule, span, start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        total = max(int(trainer.estimated_stepping_batches), 1)
        pl_module.ilsd_lambda = lambda_at(trainer.global_step / total, self.schedule, self.span, self.start)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not getattr(pl_module, "ilsd_active", False):
            return
        pl_module.log("ilsd/lambda", pl_module.ilsd_lambda, on_step=True, on_epoch=False)
        if pl_module.last_lint is not None:
            pl_module.log("ilsd/lint", float(pl_module.last_lint), on_step=True, on_epoch=False)
