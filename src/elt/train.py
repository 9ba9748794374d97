"""The training job: everything train.py runs, importable so tests drive the real thing."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from elt.config import validate_train

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Callbacks / loggers: every entry of the group that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def resolved_config(cfg: DictConfig) -> dict:
    """The run's config as a plain dict (stored in checkpoints and logged), minus Hydra's own node."""
    return {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in cfg.items()
        if k != "hydra"
    }


def train(cfg: DictConfig) -> dict:
    """Fit the configured model; returns the final logged metrics and the checkpoint path."""
    validate_train(cfg)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    datamodule = instantiate(cfg.data.module)
    model = instantiate(cfg.model, _convert_="all")  # plain containers: checkpoints load with weights_only
    resolved = resolved_config(cfg)
    model.elt_config = resolved
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:  # logger=none / debug=fdr: a learning-rate monitor has nowhere to write
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(resolved)
    if cfg.get("compile"):
        model.backbone.compile_blocks()
        log.info("torch.compile: looped blocks compiled (first steps are slow while they build)")
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: %s N=%d Lmax=%d, %.2fM parameters", cfg.run_name, type(model).__name__, cfg.N, cfg.Lmax, n_params / 1e6)
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {"metrics": metrics, "ckpt_path": save_final(trainer), "num_params": n_params}


def save_final(trainer) -> str | None:
    """Write ``last.ckpt`` at the final step: ModelCheckpoint's periodic saves miss the steps after
    the last multiple of ``every_n_train_steps``, and eval.py reads ``last.ckpt``."""
    callback = next((c for c in trainer.checkpoint_callbacks if c.save_last and c.dirpath), None)
    if callback is None:
        return None
    path = str(Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}")
    trainer.save_checkpoint(path)
    return path
