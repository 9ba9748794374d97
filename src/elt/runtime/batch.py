"""The global batch as the paper states it: per-device batch x devices x nodes x gradient accumulation."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from elt.runtime.config import ConfigError


# ---- global batch -------------------------------------------------------------------------------
def device_count(trainer: DictConfig) -> int:
    """Processes per node that ``trainer.devices`` asks for (auto / -1: every visible GPU; 1 on CPU)."""
    devices, accel = trainer.get("devices", 1), str(trainer.get("accelerator", "cpu"))
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if str(devices) in ("auto", "-1"):
        if accel in ("cpu",):
            return 1
        import torch

        n = torch.cuda.device_count()
        if n == 0 and accel in ("gpu", "cuda"):
            raise ConfigError(f"trainer.devices={devices} on accelerator {accel}: no GPU is visible")
        return max(n, 1)
    try:
        return int(devices)
    except ValueError:
        raise ConfigError(f"trainer.devices must be an integer, a list, 'auto' or -1, got {devices!r}") from None


def accumulation(global_batch: int, per_device: int, devices: int, num_nodes: int) -> int:
    world = per_device * devices * num_nodes
    if global_batch % world:
        raise ConfigError(f"global_batch ({global_batch}) must be a multiple of data.batch_size x devices x num_nodes "
                          f"({per_device} x {devices} x {num_nodes} = {world})")
    return global_batch // world


def apply_global_batch(cfg: DictConfig) -> int | None:
    """Set ``trainer.accumulate_grad_batches`` from ``global_batch`` (a no-op without that key); returns it.
    Called at the start of training (train.py), where the device count is known; an explicit different
    ``trainer.accumulate_grad_batches`` is a contradiction and stops the run."""
    gb = cfg.get("global_batch")
    if gb is None:
        return None
    if isinstance(gb, bool) or not isinstance(gb, int) or gb < 1:
        raise ConfigError(f"global_batch must be an integer >= 1 (or null), got {gb!r}")
    t = cfg.trainer
    k = accumulation(gb, int(cfg.data.batch_size), device_count(t), int(t.get("num_nodes", 1) or 1))
    given = t.get("accumulate_grad_batches")
    if given not in (None, 1, k):
        raise ConfigError(f"trainer.accumulate_grad_batches={given} contradicts global_batch={gb} (which needs {k} "
                          f"with data.batch_size={cfg.data.batch_size}); set one of them, or global_batch=null")
    with open_dict(cfg):
        cfg.trainer.accumulate_grad_batches = k
    return k
