"""The real Hydra configs, composed as an entry point would see them."""
from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = str(ROOT / "configs")


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path | None = None):
    """The config exactly as the entry point would see it, with the output dir moved to tmp."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    return cfg if output_dir is None else in_dir(cfg, output_dir)


def tiny_train(cache, steps: int = 2) -> list[str]:
    """train.py overrides for a checkpoint of a few CPU steps at width 32, its evaluation cache ``cache``."""
    return ["scale.width=32", "scale.heads=2", "scale.mlp_dim=64", f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
            "callbacks.model_checkpoint.every_n_train_steps=1", "data.batch_size=16", "model.scheduler.warmup_steps=1",
            f"paths.cache_dir={cache}"]


def in_dir(cfg, directory: Path):
    """The config with its run writing into ``directory``."""
    with open_dict(cfg):
        cfg.paths.output_dir = str(directory)
    return cfg


def child_env() -> dict[str, str]:
    """The environment of an entry point run as a process: this checkout's src/ and tests/ (where the
    support.callbacks targets live) lead its path, one thread per process."""
    path = [str(ROOT / "src"), str(ROOT / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "ELT_ROOT": str(ROOT), "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1"}
