"""Config checks that fail before any work starts, with one line naming the bad key."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from elt import repo_root

from elt.positions import POS_INITS


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


def validate_train(cfg: DictConfig) -> None:
    require_int(cfg, "N", 1)
    lmax = require_int(cfg, "Lmax", 1)
    width, heads = require_int(cfg, "scale.width", 1), require_int(cfg, "scale.heads", 1)
    if width % heads:
        raise ConfigError(f"scale.width ({width}) must be divisible by scale.heads ({heads})")
    require_int(cfg, "data.batch_size", 1)
    ilsd = cfg.ilsd
    if ilsd.enabled and lmax > 1:
        lmin = require_int(cfg, "ilsd.Lmin", 1)
        if lmin >= lmax:
            raise ConfigError(f"ilsd.Lmin must be < Lmax (student exits strictly before the teacher), got Lmin={lmin}, Lmax={lmax}")
    if ilsd.schedule not in ("linear", "cosine", "constant"):
        raise ConfigError(f"ilsd.schedule must be linear, cosine or constant, got {ilsd.schedule!r}")
    if not 0 < float(ilsd.span) <= 1 or not 0 <= float(ilsd.start) < 1:
        raise ConfigError(f"ilsd.span must be in (0, 1] and ilsd.start in [0, 1), got span={ilsd.span}, start={ilsd.start}")
    if not isinstance(cfg.get("compile", False), bool):
        raise ConfigError(f"compile must be true or false, got {cfg.get('compile')!r}")
    pos_init = OmegaConf.select(cfg, "model.pos_init", default=None)
    if pos_init is not None and not str(OmegaConf.select(cfg, "model._target_", default="")).endswith("MaskGITELT"):
        raise ConfigError(f"model.pos_init is a MaskGIT-ELT option (DiT-ELT's positions are fixed sin-cos), got model={cfg.model.get('name')}")
    if pos_init is not None and pos_init not in POS_INITS:
        raise ConfigError(f"model.pos_init must be one of {', '.join(POS_INITS)}, got {pos_init!r}")
    steps = OmegaConf.select(cfg, "trainer.max_steps")
    if not cfg.trainer.get("fast_dev_run") and (not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"trainer.max_steps must be an integer >= 1, got {steps!r}")
    every = OmegaConf.select(cfg, "trainer.val_check_interval")
    ok = (isinstance(every, int) and every >= 1) or (isinstance(every, float) and 0 < every <= 1)
    if every is not None and (isinstance(every, bool) or not ok):
        raise ConfigError(f"trainer.val_check_interval must be an integer >= 1 (steps) or a fraction in (0, 1] of an "
                          f"epoch, got {every!r}")
    for key in ("callbacks.model_checkpoint.every_n_train_steps", "callbacks.model_checkpoint.save_top_k"):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            require_int(cfg, key, 0 if key.endswith("save_top_k") else 1)
