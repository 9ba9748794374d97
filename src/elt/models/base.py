"""What every looped generative model shares: the ILSD training step, per-loop validation,
optimiser set-up and the checkpoint payload. A family (MaskGIT-ELT, DiT-ELT) fills in the
abstract methods; nothing here knows whether it predicts tokens or noise.
"""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from elt.ilsd import ILSDCallback, draw_lint, ilsd_objective


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
        self.elt_config: dict | None = None  # resolved training config, stored in checkpoints

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

    def loss(self, batch) -> tuple[torch.Tensor, dict]:
        inputs, targets = self.training_inputs(batch)
        if self.ilsd_active:
            self.last_lint = draw_lint(self.Lmin, self.Lmax)
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
        loss, parts = self.loss(batch)
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
        """Task loss at every loop count 1..Lmax from one pass, with fixed corruption per batch."""
        gen = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx)
        inputs, targets = self.training_inputs(batch, generator=gen)
        exits = list(range(1, self.Lmax + 1))
        preds = self.predict(inputs, loops=self.Lmax, exits=exits)
        for loop, pred in zip(exits, preds):
            self.log(f"val/loss_L{loop}", self.task_loss(pred, targets), prog_bar=loop == self.Lmax, sync_dist=True)

    # ---- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            # matrices decay; biases, norms and embedding tables do not
            (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = self.optimizer_factory(params=groups) if self.optimizer_factory else torch.optim.AdamW(groups)
        warmup = int(self.scheduler_cfg.get("warmup_steps", 0))
        kind = self.scheduler_cfg.get("kind", "cosine")
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        min_ratio = float(self.scheduler_cfg.get("min_lr_ratio", 0.0))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if kind == "constant":
                return 1.0
            t = min((step - warmup) / max(total - warmup, 1), 1.0)
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- checkpoints ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        if self.elt_config is not None:
            checkpoint["elt_config"] = self.elt_config

    def on_load_checkpoint(self, checkpoint):
        self.elt_config = checkpoint.get("elt_config")

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
        post = post or (lambda out, _: out.float())
        if cfg_scale == 1.0:
            return post(self.predict(inputs, loops, [loops])[0], inputs)
        null = torch.full_like(inputs["labels"], self.num_classes)
        both = {k: torch.cat([v, null if k == "labels" else v]) for k, v in inputs.items()}
        cond, uncond = post(self.predict(both, loops, [loops])[0], both).chunk(2)
        return uncond + cfg_scale * (cond - uncond)

    # ---- sampling helpers shared by families --------------------------------------------------
    def sampler_config(self, **overrides) -> dict:
        cfg = dict(self.sampler_defaults)
        unknown = set(overrides) - set(cfg)
        if unknown:
            raise ValueError(f"unknown sampler option(s) {sorted(unknown)}; known: {sorted(cfg)}")
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        return cfg

    def network_evals_per_sample(self, **overrides) -> int:
        cfg = self.sampler_config(**overrides)
        return int(cfg["steps"]) * (1 if float(cfg["cfg_scale"]) == 1.0 else 2)
