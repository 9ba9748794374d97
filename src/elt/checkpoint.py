"""Rebuild a trained model from nothing but its checkpoint file."""
from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from elt.tokenizers import require_local_file


def load_run(ckpt_path, map_location: str = "cpu") -> tuple[torch.nn.Module, DictConfig]:
    path = require_local_file(ckpt_path, "checkpoint", "pass ckpt_path=<run dir>/checkpoints/last.ckpt written by train.py")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or not a checkpoint at all
        raise ValueError(f"checkpoint {path} could not be read ({type(e).__name__}: {e})") from None
    if "elt_config" not in ckpt:
        raise ValueError(f"checkpoint {path} has no 'elt_config' (not written by this project's train.py)")
    cfg = OmegaConf.create(ckpt["elt_config"])
    model = instantiate(cfg.model, _convert_="all")  # plain containers: checkpoints load with weights_only
    model.load_state_dict(ckpt["state_dict"])
    model.elt_config = ckpt["elt_config"]
    return model.eval(), cfg
