"""Config checks that fail before any work starts, with one line naming the bad key."""
from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from elt import repo_root


class ConfigError(ValueError):
    pass


def compose(config_name: str, overrides=()) -> DictConfig:
    """``configs/<config_name>.yaml`` with ``overrides`` as its entry point would see it, without a Hydra
    run (``paths.output_dir``, which names the run's directory, stays unresolvable)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra


    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(repo_root() / "configs"), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def require_int(cfg: DictConfig, key: str, minimum: int) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def instantiate_group(group: DictConfig | None) -> list:
    """Callbacks / loggers: every entry of the group that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]
