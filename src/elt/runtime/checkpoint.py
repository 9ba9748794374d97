"""Reading checkpoint files: the one reader every consumer goes through, and a trained model rebuilt
from nothing but its checkpoint."""
from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from elt.runtime.cli import one_line
from elt.runtime.config import ConfigError
from elt.runtime.files import require_local_file

# What the consumers of a run (eval, the notebook, the context test) read from its stored config:
# a checkpoint without one of them fails here, naming it, not halfway through an evaluation.
REQUIRED_KEYS = ("run_name", "model._target_", "model.name", "data.name", "data.module", "data.module._target_")


# Checkpoints name their classes by import path; these moved into the layered packages, so a run
# trained under the old paths still loads (and resumes) under the new ones.
MOVED_TARGETS = {
    "elt.backbone.fsdp_wrap_policy": "elt.core.backbone.fsdp_wrap_policy",
    "elt.ilsd.ILSDCallback": "elt.core.ilsd.ILSDCallback",
    "elt.loggers.AppendingCSVLogger": "elt.runtime.loggers.AppendingCSVLogger",
    "elt.report.run_tags": "elt.runtime.loggers.run_tags",
    "elt.tokenizers.PixelTokenizer": "elt.encoders.tokenizers.PixelTokenizer",
    "elt.tokenizers.PixelAutoencoder": "elt.encoders.tokenizers.PixelAutoencoder",
    "elt.tokenizers.ScriptedTokenizer": "elt.encoders.tokenizers.ScriptedTokenizer",
    "elt.tokenizers.ScriptedAutoencoder": "elt.encoders.tokenizers.ScriptedAutoencoder",
    "elt.pretrained.DiffusersVQTokenizer": "elt.encoders.pretrained.DiffusersVQTokenizer",
    "elt.pretrained.DiffusersAutoencoderKL": "elt.encoders.pretrained.DiffusersAutoencoderKL",
    "elt.data.raw.ImageNetRaw": "elt.data.raw.images.ImageNetRaw",
    "elt.data.raw.ImageFolderRaw": "elt.data.raw.images.ImageFolderRaw",
    "elt.data.raw.UCF101Raw": "elt.data.raw.ucf101.UCF101Raw",
}


def retarget(node, paths: dict[str, str]):
    """A plain config with every ``_target_`` found in ``paths`` replaced by its value there."""
    if isinstance(node, dict):
        return {k: paths.get(v, v) if k == "_target_" and isinstance(v, str) else retarget(v, paths)
                for k, v in node.items()}
    if isinstance(node, list):
        return [retarget(v, paths) for v in node]
    return node


# Cache keys (judges, reference statistics, evaluation rows) name a class by its first path, so moving
# a class keeps what was computed with it.
FIRST_TARGETS = {new: old for old, new in MOVED_TARGETS.items()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, read or resumed from (shown to the user as one line)."""


def read_checkpoint(path, map_location: str = "cpu") -> dict:
    """The checkpoint, memory-mapped (cheap even for billions of parameters), or one clear error."""
    try:
        ckpt = torch.load(path, map_location=map_location, mmap=True, weights_only=False)
    except Exception as e:  # truncated, random bytes, not a zip file, ...
        raise CheckpointError(f"checkpoint {path} is unreadable ({one_line(e, foreign=True)}); "
                              f"it is truncated or not a checkpoint") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} has no state_dict: not a Lightning checkpoint written by train.py")
    if isinstance(ckpt.get("elt_config"), dict):
        ckpt["elt_config"] = retarget(ckpt["elt_config"], MOVED_TARGETS)
    return ckpt


def require_ckpt_path(cfg: DictConfig) -> str:
    """The job's ``ckpt_path``, or one line saying how to pass it."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path is required: pass ckpt_path=<run dir>/checkpoints/last.ckpt")
    return cfg.ckpt_path


def load_run(ckpt_path, map_location: str = "cpu") -> tuple[torch.nn.Module, DictConfig]:
    path = require_local_file(ckpt_path, "checkpoint", "pass ckpt_path=<run dir>/checkpoints/last.ckpt written by train.py")
    ckpt = read_checkpoint(path, map_location)
    if "elt_config" not in ckpt:
        raise CheckpointError(f"checkpoint {path} has no 'elt_config' (not written by this project's train.py)")
    try:
        cfg = OmegaConf.create(ckpt["elt_config"])
        missing = []
        for k in REQUIRED_KEYS:  # "data.module" missing: not also "data.module._target_"
            if OmegaConf.select(cfg, k, default=None) is None and not any(k.startswith(m + ".") for m in missing):
                missing.append(k)
    except Exception as e:  # not a mapping, or interpolations that no longer resolve
        raise CheckpointError(f"checkpoint {path}: its stored config is unusable ({one_line(e, foreign=True)})") from None
    if missing:
        raise CheckpointError(f"checkpoint {path}: its stored config lacks {', '.join(missing)} "
                         "(written by an older or foreign train.py); retrain or add the key")
    model = instantiate(cfg.model, _convert_="all")  # plain containers: checkpoints load with weights_only
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:  # weights of another architecture than the stored config builds
        raise CheckpointError(f"checkpoint {path}: its weights do not fit its stored model config "
                              f"({one_line(e, foreign=True)})") from None
    model.elt_config = ckpt["elt_config"]
    return model.eval(), cfg


def relocate_data(cfg: DictConfig, raw_root=None, root=None) -> DictConfig:
    """The run's data config with its raw data and shard directories moved, for evaluating on
    another machine than the one that trained: the stored config is resolved, so every copy of a
    path (``data.raw_root``, ``data.module.raw_root``, each reader's ``raw_root``) changes together."""
    for key, value in (("raw_root", raw_root), ("root", root)):
        if value in (None, ""):
            continue
        for node in (cfg.data, cfg.data.get("module")):
            if node is not None and key in node:
                node[key] = str(value)
        if key == "raw_root":
            for readers in (cfg.data.get("raw"), OmegaConf.select(cfg, "data.module.raw", default=None)):
                for reader in (readers or {}).values():
                    if "raw_root" in reader:
                        reader["raw_root"] = str(value)
    return cfg
