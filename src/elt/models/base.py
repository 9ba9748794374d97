"""What every looped generative model shares: the ILSD training step, per-loop validation,
optimiser set-up and the checkpoint payload. A family (MaskGIT-ELT, DiT-ELT) fills in the
abstract methods; nothing here knows whether it predicts tokens or noise.
"""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from elt.core import guidance
from elt.core.flops import evals_per_step
from elt.core.ilsd import ILSDCallback, draw_lint, ilsd_objective
from elt.core.optim import param_groups
from elt.runtime.resume import mix_seed


def lr_factor(step: int, total: int, warmup_steps: int = 0, kind: str = "cosine", min_lr_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at ``step`` of ``total``: linear warmup, then cosine to
    ``min_lr_ratio`` (or constant). A function of step / total, so a longer run re-stretches it."""
    warmup = int(warmup_steps)
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    t = min((step - warmup) / max(total - warmup, 1), 1.0)
    return float(min_lr_ratio) + (1 - float(min_lr_ratio)) * 0.5 * (1 + math.cos(math.pi * t))


EXPLICIT_NONE = ("cfg_interval", "clip_x0")  # sampler options whose None means "off", not "the default"


class LoopedGenerativeModule(L.LightningModule):
    def __init__(
        self,
        N: int,
        Lmax: int,
        num_classes: int,
        ilsd: dict | None = None,
        optimizer: Any = None,
        scheduler: dict | None = None,
        label_drop: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= label_drop < 1.0:
            raise ValueError(f"model.label_drop must be in [0, 1), got {label_drop}")
        self.label_drop = float(label_drop)  # share of training labels replaced by the null class
        self.N, self.Lmax, self.num_classes = int(N), int(Lmax), int(num_classes)
        ilsd = dict(ilsd or {})
        self.ilsd_enabled = bool(ilsd.get("enabled", True))
        self.Lmin = int(ilsd.get("Lmin", 1))
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(scheduler or {})
        self.ilsd_lambda = 1.0  # set every step by ILSDCallback
        self.last_lint: int | None = None
        self.elt_config: dict | None = None  # resolved config of the run that writes the checkpoint
        self.noise_seed = 0  # train.py sets the run's seed

    # ---- what a family supplies -------------------------------------------------------------
    def training_inputs(self, batch, generator: torch.Generator | None = None):
        """-> (inputs, targets): the corrupted input the network sees and what its loss needs."""
        raise NotImplementedError

    def predict(self, inputs, loops: int, exits: list[int]) -> list:
        """One network evaluation; the shared head applied at each exit."""
        raise NotImplementedError

    def task_loss(self, pred, targets) -> torch.Tensor:
        raise NotImplementedError

    def distill_loss(self, student_pred, teacher_pred, targets) -> torch.Tensor:
        raise NotImplementedError

    # ---- ILSD ---------------------------------------------------------------------------------
    @property
    def ilsd_active(self) -> bool:
        return self.ilsd_enabled and self.Lmax > 1  # Lmax=1 (the non-looped baseline) has no student

    def step_generators(self, batch_idx: int = 0) -> tuple[torch.Generator, torch.Generator]:
        """(corruption, exit) generators of this training step, pure functions of the run's seed and
        step: every rank draws its own mask / t / ε / label drop (seeded by rank), all ranks draw the
        same student exit (so a step's compute is balanced), and a resumed run draws exactly what
        the uninterrupted one would have, whatever happened to the global RNG in between."""
        trainer = self._trainer
        step = self.global_step if trainer is not None else 0
        micro = batch_idx % max(int(getattr(trainer, "accumulate_grad_batches", 1) or 1), 1) if trainer else 0
        noise = torch.Generator(device=self.device).manual_seed(mix_seed(self.noise_seed, self.global_rank, step, micro))
        lint = torch.Generator().manual_seed(mix_seed(self.noise_seed, -1, step, micro))
        return noise, lint

    def loss(self, batch, batch_idx: int = 0) -> tuple[torch.Tensor, dict]:
        noise, exit_gen = self.step_generators(batch_idx)
        inputs, targets = self.training_inputs(batch, generator=noise)
        if self.ilsd_active:
            self.last_lint = draw_lint(self.Lmin, self.Lmax, generator=exit_gen)
            student, teacher = self.predict(inputs, loops=self.Lmax, exits=[self.last_lint, self.Lmax])
        else:
            self.last_lint, student = None, None
            (teacher,) = self.predict(inputs, loops=self.Lmax, exits=[self.Lmax])
        return ilsd_objective(
            teacher,
            student,
            task_loss=lambda p: self.task_loss(p, targets),
            distill_loss=lambda s, t: self.distill_loss(s, t, targets),
            lam=self.ilsd_lambda,
        )

    def training_step(self, batch, batch_idx):
        loss, parts = self.loss(batch, batch_idx)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss at step {self.global_step}: "
                + ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
            )
        self.log("train/loss", loss, prog_bar=True)
        for k, v in parts.items():
            self.log(f"train/{k}", v)
        return loss

    def on_train_start(self):
        if self.ilsd_active and not any(isinstance(c, ILSDCallback) for c in self.trainer.callbacks):
            raise RuntimeError("ILSD is enabled but the trainer has no ILSDCallback to schedule λ (callbacks.ilsd)")

    # ---- any-time signal during training -------------------------------------------------------
    def validation_step(self, batch, batch_idx):
        """Task loss at every loop count 1..Lmax from one pass, with fixed corruption per batch; the
        top exit also as ``val/loss_Lmax``, one key that runs of different Lmax share on a dashboard."""
        gen = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx)
        inputs, targets = self.training_inputs(batch, generator=gen)
        exits = list(range(1, self.Lmax + 1))
        preds = self.predict(inputs, loops=self.Lmax, exits=exits)
        for loop, pred in zip(exits, preds):
            loss = self.task_loss(pred, targets)
            self.log(f"val/loss_L{loop}", loss, prog_bar=loop == self.Lmax, sync_dist=True)
            if loop == self.Lmax:
                self.log("val/loss_Lmax", loss, sync_dist=True)

    # ---- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        groups = param_groups(self)  # by module type: the same groups with or without FSDP
        opt = self.optimizer_factory(params=groups) if self.optimizer_factory else torch.optim.AdamW(groups)
        total = max(int(self.trainer.estimated_stepping_batches), 1)

        def factor(step: int) -> float:
            return lr_factor(step, total, **self.scheduler_cfg)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Under FSDP the norm must be taken over every rank's shards: the root unit's own
        ``clip_grad_norm_`` (Lightning's norm clipping refuses FSDP)."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if gradient_clip_val and isinstance(self.trainer.model, FSDP):
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---- checkpoints ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        if self.elt_config is not None:
            checkpoint["elt_config"] = self.elt_config

    # ---- class conditioning shared by families -----------------------------------------------
    def drop_labels(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training only: replace ``self.label_drop`` of the labels by the null class (index
        num_classes), which classifier-free guidance needs as its unconditional model."""
        if not self.training or self.label_drop <= 0:
            return labels
        drop = torch.rand(labels.shape[0], generator=generator, device=labels.device) < self.label_drop
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def guided_predict(self, inputs: dict, loops: int, cfg_scale: float, post=None) -> torch.Tensor:
        """The prediction at exit ``loops`` under guidance uncond + s·(cond − uncond).

        s = 1 is one plain conditional pass; otherwise conditional and null-class inputs go through
        ONE evaluation of a doubled batch. ``post(output, inputs)`` maps the raw output to the space
        guidance is applied in (float logits, x̂0) before the two halves are combined.
        """
        post = post or guidance.as_float
        feed = guidance.guidance_batch(inputs, cfg_scale, self.num_classes)
        return guidance.combine(post(self.predict(feed, loops, [loops])[0], feed), cfg_scale)

    # ---- sampling helpers shared by families --------------------------------------------------
    def sampler_config(self, **overrides) -> dict:
        cfg = dict(self.sampler_defaults)
        unknown = set(overrides) - set(cfg)
        if unknown:
            raise ValueError(f"unknown sampler option(s) {sorted(unknown)}; known: {sorted(cfg)}")
        # None keeps the default, except where None is itself a setting (no guidance interval, no clipping)
        cfg.update({k: v for k, v in overrides.items() if v is not None or k in EXPLICIT_NONE})
        return cfg

    def embed(self, inputs: dict):
        """-> (backbone input [B, S, D], conditioning or None): ``predict`` before the backbone."""
        raise NotImplementedError

    def readout(self, state: torch.Tensor, cond) -> torch.Tensor:
        """The shared head on a backbone state: ``predict`` after the backbone."""
        raise NotImplementedError

    def network_evals_per_sample(self, **overrides) -> int:
        cfg = self.sampler_config(**overrides)
        return int(cfg["steps"]) * evals_per_step(cfg["cfg_scale"])
