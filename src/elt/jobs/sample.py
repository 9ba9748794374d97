"""Sample a checkpoint under a compute budget: the sample.py job."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from elt.evaluation.plots import save_animation, save_grid
from elt.runtime import precision, rundir
from elt.runtime.checkpoint import load_run, require_ckpt_path
from elt.runtime.config import ConfigError
from elt.runtime.devices import pick_device
from elt.runtime.distributed import Ranks
from elt.runtime.kernels import set_cpu_kernels
from elt.samplers.budget import BudgetError, generate


def find_front(spec, ckpt_path) -> str | None:
    """``front: auto`` finds ``<run dir>/pareto/front.json`` beside the checkpoint's directory."""
    if spec in (None, "none", "null"):
        return None
    if spec == "auto":
        candidate = Path(str(ckpt_path)).resolve().parent.parent / "pareto" / "front.json"
        return str(candidate) if candidate.is_file() else None
    if not Path(str(spec)).is_file():
        raise BudgetError(f"front={spec} is not a file (a front.json of elt.jobs.pareto, auto or null)")
    return str(spec)


def sample_entry(cfg) -> dict:
    """sample.py: load, choose under the budget, sample, write the grid, print the choice."""
    require_ckpt_path(cfg)
    gflops, seconds = OmegaConf.select(cfg, "budget.gflops"), OmegaConf.select(cfg, "budget.seconds")
    n = cfg.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be an integer >= 1 (samples per label), got {n!r}")
    device = pick_device(cfg.get("device", "auto"), Ranks())
    prec = precision.resolve(cfg.get("precision", "auto"), device.type, "precision")
    set_cpu_kernels(cfg.get("cpu_kernels", "auto"))
    model, train_cfg = load_run(cfg.ckpt_path)
    model.to(device)
    labels = cfg.get("labels")
    labels = list(range(model.num_classes)) if labels is None else list(labels)
    if not labels or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < model.num_classes for c in labels):
        raise ConfigError(f"labels must be class indices in [0, {model.num_classes}), got {labels!r}")
    if cfg.sampler is not None and not OmegaConf.is_dict(cfg.sampler):
        raise ConfigError(f"sampler must be a mapping like {{cfg_scale: 2.0}}, got {cfg.sampler!r}")
    overrides = OmegaConf.to_container(cfg.sampler, resolve=True) if cfg.sampler else {}
    early_exit = OmegaConf.to_container(cfg.early_exit, resolve=True) if OmegaConf.is_dict(cfg.early_exit) else cfg.early_exit
    front = find_front(cfg.get("front"), cfg.ckpt_path)
    y = torch.tensor(labels).repeat_interleave(n)
    rundir.started()
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    t0 = time.perf_counter()
    with precision.autocast(device.type, prec):
        images, choice = generate(model, y, gflops=gflops, seconds=seconds, front=front, generator=gen,
                                  early_exit=early_exit, **overrides)
    wall = time.perf_counter() - t0
    out = Path(str(cfg.output_dir))
    grid = save_grid(images.float(), y, out / "samples.png", n, sorted(set(labels)))
    if images.ndim == 5:
        save_animation(images.float(), y, out / "samples.gif", n, sorted(set(labels)), 4)
    print(f"chose {choice.describe()}")
    print(f"{len(y)} samples in {wall:.3g} s -> {grid}")
    return {"choice": choice, "grid": str(grid), "seconds": wall}
