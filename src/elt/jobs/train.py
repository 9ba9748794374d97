"""The training job: everything train.py runs, importable so tests drive the real thing."""
from __future__ import annotations

import logging
import signal
import sys
import uuid
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from elt.runtime import rundir
from elt.runtime.batch import apply_global_batch
from elt.runtime.config import ConfigError, instantiate_group, require_int

# torch, Lightning and the models are imported by the functions that use them, after validate_train:
# a bad value is one line within a second, not after the imports (~10 s)

log = logging.getLogger(__name__)


def resolved_config(cfg: DictConfig) -> dict:
    """The run's config as a plain dict (stored in checkpoints and logged), minus Hydra's own node."""
    return {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in cfg.items()
        if k != "hydra"
    }


def debug_choice() -> str | None:
    """The chosen ``debug=`` option (fdr, limit, overfit), or None for a real run."""
    return HydraConfig.get().runtime.choices.get("debug") if HydraConfig.initialized() else None


def checkpoint_dir(cfg: DictConfig) -> Path:
    """Where ModelCheckpoint writes (and so where ``ckpt_path=last`` looks)."""
    return Path(OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath") or Path(cfg.paths.output_dir) / "checkpoints")


def check_output_dirs(cfg: DictConfig) -> None:
    """Fail at start, not after training, when the run cannot write its checkpoints; and never let
    a debug run (fdr, limit, overfit) write into a directory that holds a trained run."""
    out = Path(cfg.paths.output_dir)
    debug = debug_choice()
    if debug and (any((out / "checkpoints").glob("*.ckpt")) or (out / "csv" / "metrics.csv").is_file()):
        raise ConfigError(f"debug={debug} refused: {out} holds a trained run (checkpoints or csv/metrics.csv); "
                          f"debug runs must not write there: give them their own hydra.run.dir")
    ckpt_dir = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
    trained = checkpoint_dir(cfg) / "last.ckpt"
    if not debug and cfg.get("ckpt_path") in (None, "") and trained.is_file():
        raise ConfigError(f"{trained} exists: this directory holds a trained run; resume or extend it with "
                          f"ckpt_path=last, or give the new run another hydra.run.dir")
    for d in [out] + ([Path(ckpt_dir)] if ckpt_dir and not cfg.trainer.get("fast_dev_run") else []):
        probe = Path(d) / f".write_test_{uuid.uuid4().hex[:8]}"
        try:
            Path(d).mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"cannot write to {d} ({e.strerror or e}): checkpoints and logs go there "
                              f"(set hydra.run.dir or callbacks.model_checkpoint.dirpath)") from None


def refuse_optimizer_change(saved: dict | None, resolved: dict, path: str) -> None:
    """Lightning restores the optimizer's own hyper-parameters on resume: a new value would be ignored."""
    from elt.runtime.resume import config_differences

    changed = [d for d in config_differences(saved, resolved, keys=("model",)) if d.startswith("model.optimizer")]
    if changed:
        raise ConfigError(f"resuming {path} with another optimizer setting ({', '.join(changed[:3])}): the "
                          f"checkpoint's optimizer state would override it; keep the old value or start a new run")


def explain_extension(saved: dict | None, cfg: DictConfig, step: int) -> None:
    """Extending a finished run: λ and the learning rate are functions of step / max_steps, so a new
    max_steps re-stretches both schedules and they jump to their values at the new progress."""
    from elt.core.ilsd import lambda_at
    from elt.models.base import lr_factor

    old_steps = OmegaConf.select(OmegaConf.create(saved or {}), "trainer.max_steps")
    new_steps = cfg.trainer.max_steps
    if not isinstance(old_steps, int) or old_steps == new_steps or step <= 0:
        return
    il = cfg.ilsd
    lam = [lambda_at(min(step / n, 1.0), il.schedule, il.span, il.start) for n in (old_steps, new_steps)]
    base_lr = float(OmegaConf.select(cfg, "model.optimizer.lr", default=0.0) or 0.0)
    sched = OmegaConf.to_container(cfg.model.get("scheduler") or {}, resolve=True)
    lr = [base_lr * lr_factor(min(step, n), n, **sched) for n in (old_steps, new_steps)]
    log.warning("resuming at step %d with trainer.max_steps %d -> %d: the λ and learning-rate schedules follow "
                "step / max_steps, so they continue from their values at %.0f%% of the new run (λ %.2f -> %.2f, "
                "lr %.2g -> %.2g)", step, old_steps, new_steps, 100 * step / max(new_steps, 1), *lam, *lr)


def train(cfg: DictConfig) -> dict:
    """Fit the configured model; returns the final logged metrics and the checkpoint path."""
    validate_train(cfg)
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from elt.core.flops import gflops_per_sample
    from elt.runtime.loggers import run_size
    from elt.runtime.precision import lightning_precision
    from elt.runtime.resume import Preempted, Preemption, RandomState, check_resumable, resolve_ckpt_path

    apply_global_batch(cfg)  # paper rows: global_batch -> trainer.accumulate_grad_batches for this world size
    check_output_dirs(cfg)
    L.seed_everything(cfg.seed, workers=True)  # identical initial weights on every rank
    torch.set_float32_matmul_precision("high")
    datamodule = instantiate(cfg.data.module)
    if hasattr(datamodule, "shuffle_seed"):
        datamodule.shuffle_seed = int(cfg.seed)
    model = instantiate(cfg.model, _convert_="all")  # plain containers: checkpoints load with weights_only
    model.noise_seed = int(cfg.seed)
    precision = lightning_precision(cfg.trainer.get("precision", "32-true"), str(cfg.trainer.get("accelerator", "cpu")))
    resolved = resolved_config(cfg)
    resolved["trainer"]["precision"] = precision
    model.elt_config = resolved  # the config of the run that writes each checkpoint (also when resuming)
    check_strategy(cfg, model)

    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), checkpoint_dir(cfg))
    if hasattr(datamodule, "check_batch_size"):  # before any logger writes or validation runs
        devices, nodes = cfg.trainer.get("devices"), cfg.trainer.get("num_nodes", 1)
        datamodule.check_batch_size(devices * nodes if isinstance(devices, int) and isinstance(nodes, int) else None)
    if ckpt_path is not None:
        ckpt = check_resumable(ckpt_path, model, resolved)
        refuse_optimizer_change(ckpt.get("elt_config"), resolved, ckpt_path)
        explain_extension(ckpt.get("elt_config"), cfg, int(ckpt.get("global_step", 0)))
        del ckpt

    callbacks = instantiate_group(cfg.get("callbacks")) + [Preemption(), RandomState()]
    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:  # logger=none / debug=fdr: a learning-rate monitor has nowhere to write
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if cfg.trainer.get("fast_dev_run"):  # Lightning's ModelCheckpoint still writes last.ckpt at train end
        callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
    rundir.started()  # every check passed: what the run writes from here on is kept
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision,
                          plugins=trainer_plugins(cfg))
    n_params = sum(p.numel() for p in model.parameters())
    for lg in loggers:
        lg.log_hyperparams(resolved)
    run_size(loggers, n_params, gflops_per_sample(model, model.Lmax, model.sampler_config()))
    if cfg.get("compile"):
        model.backbone.compile_blocks()
        log.info("torch.compile: looped blocks compiled (first steps are slow while they build)")
    log.info("%s: %s N=%d Lmax=%d, %.2fM parameters", cfg.run_name, type(model).__name__, cfg.N, cfg.Lmax, n_params / 1e6)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:  # Lightning's exit code 0, before any training step: nothing to save
        print("SIGTERM before the first training step: nothing trained, nothing saved", file=sys.stderr)
        raise Preempted(128 + signal.SIGTERM) from None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    final = None if cfg.trainer.get("fast_dev_run") else save_final(trainer)
    return {"metrics": metrics, "ckpt_path": final, "num_params": n_params}


def trainer_plugins(cfg: DictConfig) -> list:
    """The config's plugins plus atomic checkpoint writes; under SLURM Lightning's own auto-requeue is
    off (its SIGUSR1 handler would write hpc_ckpt files and requeue behind the Preemption callback)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from elt.runtime.resume import AtomicCheckpointIO

    plugins = [instantiate(p) for p in (cfg.trainer.get("plugins") or [])] + [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def check_strategy(cfg: DictConfig, model) -> None:
    """FSDP under any spelling (trainer=fsdp, a strategy string or _target_) refuses the EMA."""
    strategy = cfg.trainer.get("strategy")
    name = str(strategy.get("_target_", "") if OmegaConf.is_dict(strategy) else strategy or "").lower()
    if "fsdp" in name and getattr(model, "ema", None) is not None:
        raise ConfigError("model.ema_decay: the EMA keeps a full unsharded copy of the weights, which FSDP cannot "
                          "shard; set model.ema_decay=null under trainer=fsdp, or train with trainer=ddp")


def save_final(trainer) -> str | None:
    """Write ``last.ckpt`` at the final step: ModelCheckpoint's periodic saves miss the steps after
    the last multiple of ``every_n_train_steps``, and eval.py reads ``last.ckpt``."""
    from elt.runtime.resume import last_checkpoint_path

    path = last_checkpoint_path(trainer)
    if path is not None:
        trainer.save_checkpoint(path)
    return path


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
    from elt.core.positions import POS_INITS

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
