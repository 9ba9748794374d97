"""Compose the real Hydra configs, shrink them, and run the real entry points."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = str(ROOT / "configs")
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("ELT_ROOT", str(ROOT))
torch.set_num_threads(2)


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path | None = None):
    """The config exactly as the entry point would see it, with the output dir moved to tmp."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        if output_dir is not None:
            with open_dict(cfg):
                cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def train_cfg(tmp_path):
    """A factory: train config shrunk to a handful of CPU steps."""

    def make(*overrides: str):
        base = [
            "scale=tiny", "scale.width=32", "scale.heads=2", "scale.mlp_dim=64",
            "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false", "callbacks.model_checkpoint.every_n_train_steps=1",
            "data.batch_size=16", "model.scheduler.warmup_steps=1", f"paths.cache_dir={tmp_path / 'cache'}",
        ]
        return compose_cfg("train", base + list(overrides), tmp_path / "train")

    return make
