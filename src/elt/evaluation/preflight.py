"""Checks of an evaluation's inputs that must fail before any sampling: one line naming the culprit."""
from __future__ import annotations

import math
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from elt.runtime.config import ConfigError


def require_creatable_dir(path, key: str) -> None:
    """Fail at the start, not when the first finished row is written, if ``path`` cannot become a
    directory we can write to. Creates nothing."""
    p = Path(str(path)).absolute()
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={path} cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path} cannot be written: {existing} is not writable")


class CheckRunDir(Callback):
    """Hydra creates ``hydra.run.dir`` before the job runs, with a traceback when it cannot: check
    it first and say so in one line (configs/eval.yaml registers this callback)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from elt.runtime.cli import run_cli

        HydraConfig.instance().set_config(config)  # resolves ${hydra:...} in the run dir's path
        run_cli(lambda c: require_creatable_dir(c.hydra.run.dir, "hydra.run.dir"), config)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_sampler(sampler: dict) -> dict:
    """The merged sampler settings (the checkpoint's, overridden by eval.sampler), checked before
    any sampling: a bad value would otherwise surface after the reference rows were scored."""
    from elt.samplers.diffusion import SAMPLERS, check_options  # torch: not at import, Hydra's callback imports us

    checks = {
        "steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
        "cfg_scale": (lambda v: _number(v) and v >= 0, "a number >= 0 (1 = no guidance)"),
        "temperature_start": (lambda v: _number(v) and v >= 0, "a number >= 0"),
        "temperature_end": (lambda v: _number(v) and v >= 0, "a number >= 0"),
        "choice_temperature": (lambda v: _number(v) and v >= 0, "a number >= 0"),
        "kind": (lambda v: v in SAMPLERS, " or ".join(SAMPLERS)),
        "clip_x0": (lambda v: v is None or (_number(v) and v > 0), "null or a number > 0"),
        "ema": (lambda v: isinstance(v, bool), "true or false"),
    }
    for key, (ok, want) in checks.items():
        if key in sampler and not ok(sampler[key]):
            raise ConfigError(f"eval.sampler.{key} must be {want}, got {sampler[key]!r}")
    if "kind" in sampler:  # a diffusion solver: its own rules (spacing, guidance interval, heun's steps)
        try:
            check_options(sampler)
        except ValueError as e:
            raise ConfigError(str(e).replace("model.sampler.", "eval.sampler.")) from None
    return sampler
