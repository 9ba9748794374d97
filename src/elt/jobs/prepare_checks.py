"""prepare.py's checks of its configuration, in a module that imports neither torch nor Lightning: a wrong
value is one line within a second, before the encoding job's imports."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from elt.runtime.config import ConfigError, require_int


def check_config(cfg: DictConfig) -> list[str]:
    """Everything that can be checked before reading a file; returns the splits to prepare."""
    data = cfg.data
    if data.get("raw_root") in (None, "", "None", "null"):
        raise ConfigError(f"data.raw_root is not set: point it at the raw {data.name} data; "
                          f"{data.get('how_to_get') or 'see the data config'}")
    if not Path(str(data.raw_root)).exists():
        raise ConfigError(f"data.raw_root={data.raw_root} does not exist: point it at the raw {data.name} data; "
                          f"{data.get('how_to_get') or 'see the data config'}")
    if not data.get("root"):
        raise ConfigError("data.root is not set: the directory the shards are written to")
    raw = data.get("raw")
    if not OmegaConf.is_dict(raw) or not raw:
        raise ConfigError(f"data.raw: data={data.name} names no raw reader per split (data.raw.train, data.raw.val)")
    splits = cfg.prepare.get("splits") or list(raw.keys())
    unknown = [s for s in splits if s not in raw]
    if unknown:
        raise ConfigError(f"prepare.splits: {unknown} not in data.raw ({list(raw.keys())})")
    for key in ("shard_size", "batch_size"):
        require_int(cfg, f"prepare.{key}", 1)
    require_int(cfg, "prepare.seed", 0)
    if "tokenizer" not in cfg.model and "autoencoder" not in cfg.model:
        raise ConfigError(f"model={cfg.model.get('name')}: has neither a tokenizer nor an autoencoder to encode with")
    return list(splits)
