"""The eval config's ``eval.*`` section, checked in full before any sampling: one line names a bad key."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from omegaconf import DictConfig, ListConfig, OmegaConf

from elt.core import schedules
from elt.evaluation.extractors import STANDARD_EXTRACTORS
from elt.evaluation.plots import MAX_GIF_FPS
from elt.runtime.config import ConfigError, require_int

log = logging.getLogger(__name__)


@dataclass
class Settings:
    loops: list[int]
    samples_per_class: int
    batch_size: int
    grid_per_class: int
    grid_max_classes: int
    gif_fps: float
    extractors: list[str]
    is_splits: int
    pr_k: int | None
    reference_rows: bool
    reference_split: str
    floor_split: str
    seed: int
    progress: bool
    reference_stats: str | None = None  # a precomputed InceptionV3 reference (ADM's .npz) instead of a split
    reference_per_class: int | None = None  # reference statistics on at most this many items per class
    trivial_fit_items: int | None = None  # the trivial row's marginals from at most this many training items
    schedules: list = field(default_factory=list)  # loop schedules scored as rows beside the fixed-L ones
    reconstruction_row: bool = False  # the stage-one floor: floor-split images through the model's tokenizer/autoencoder
    save_samples: bool = False  # every model row's samples as <output_dir>/samples/<key>.npz, ADM's evaluator's format


def loops_override(spec) -> str:
    """``eval.loops`` as written on eval.py's command line: ``all``, ``4`` or ``[1,2,4]``."""
    return f"[{','.join(str(int(x)) for x in spec)}]" if isinstance(spec, (list, ListConfig)) else str(spec)


def parse_loops(spec, extra: int, lmax: int) -> list[int]:
    if isinstance(spec, str) and spec == "all":
        loops = list(range(1, lmax + 1))
    elif isinstance(spec, int) and not isinstance(spec, bool):
        loops = [spec]
    elif isinstance(spec, (list, tuple, ListConfig)):
        loops = list(spec)
    else:
        raise ConfigError(f"eval.loops must be 'all', an integer or a list of integers, got {spec!r}")
    if not loops or any(isinstance(L, bool) or not isinstance(L, int) or L < 1 for L in loops):
        raise ConfigError(f"eval.loops must contain integers >= 1, got {spec!r}")
    return sorted(set(loops) | set(range(lmax + 1, lmax + extra + 1)))


def read_settings(cfg: DictConfig, lmax: int, num_classes: int) -> Settings:
    """All eval.* checks, before any sampling: one line naming the bad key."""
    e = cfg.eval
    if e.get("num_samples") is not None:
        n = require_int(cfg, "eval.num_samples", 1)
        per_class = math.ceil(n / num_classes)  # class-balanced: rounded up to a multiple of the classes
        if per_class * num_classes != n:
            log.info("eval.num_samples=%d rounded up to %d (%d per class)", n, per_class * num_classes, per_class)
    else:
        per_class = require_int(cfg, "eval.samples_per_class", 1)
    extractors = e.extractors
    if isinstance(extractors, str):
        extractors = [extractors]
    extractors = list(extractors)
    known = {"auto", "judge", *STANDARD_EXTRACTORS}
    bad = [x for x in extractors if x not in known and not x.endswith("_cnn")]
    if not extractors or bad:
        raise ConfigError(f"eval.extractors: unknown {bad or extractors}; choose from {sorted(known)}")
    pr = e.get("precision_recall", False)
    if pr is not False and pr is not None:
        pr = require_int(cfg, "eval.precision_recall", 1)  # the k of the k-NN manifolds
    for split in ("reference_split", "floor_split"):
        if e.get(split) not in ("train", "val"):
            raise ConfigError(f"eval.{split} must be train or val, got {e.get(split)!r}")
    fps = e.get("gif_fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= MAX_GIF_FPS:
        raise ConfigError(f"eval.gif_fps must be a number in (0, {MAX_GIF_FPS}] (frames per second of the "
                          f"animated video grids), got {fps!r}")
    is_splits = require_int(cfg, "eval.is_splits", 1)
    optional = {k: None if e.get(k) is None else require_int(cfg, f"eval.{k}", 1)
                for k in ("reference_per_class", "trivial_fit_items")}
    reference_stats = e.get("reference_stats")
    if reference_stats is not None and (not isinstance(reference_stats, str) or not reference_stats.strip()):
        raise ConfigError(f"eval.reference_stats must be the path of an .npz file or null, got {reference_stats!r}")
    if is_splits > per_class:
        # A split of n < K samples caps IS at n (1 ± 0 with one sample per split): each split
        # should hold every class once, which the class-balanced labels give with per_class splits.
        log.warning("eval.is_splits=%d needs >= %d samples per class (each IS split should hold all %d classes); "
                    "with %d per class IS is computed over %d split(s)%s", is_splits, is_splits, num_classes,
                    per_class, per_class, ", without a ± spread" if per_class == 1 else "")
        is_splits = per_class
    specs = e.get("schedules") or []
    if isinstance(specs, str) or not isinstance(specs, (list, ListConfig)):
        raise ConfigError(f"eval.schedules must be a list of loop schedules like [linear:1-4, step:4-2], got {specs!r}")
    specs = [OmegaConf.to_container(x) if isinstance(x, ListConfig) else x for x in specs]
    schedules.check_specs(specs, "eval.schedules")
    save_samples = e.get("save_samples", False)
    if not isinstance(save_samples, bool):
        raise ConfigError(f"eval.save_samples must be true or false, got {save_samples!r}")
    return Settings(
        schedules=specs,
        loops=parse_loops(e.loops, require_int(cfg, "eval.extra_loops", 0), lmax),
        samples_per_class=per_class,
        batch_size=require_int(cfg, "eval.batch_size", 1),
        grid_per_class=require_int(cfg, "eval.grid_per_class", 0),
        grid_max_classes=require_int(cfg, "eval.grid_max_classes", 1),
        gif_fps=fps,
        extractors=extractors,
        is_splits=is_splits,
        pr_k=pr or None,
        reference_rows=bool(e.reference_rows),
        reference_split=e.reference_split,
        floor_split=e.floor_split,
        seed=require_int(cfg, "seed", 0),
        progress=bool(e.get("progress", True)),
        reference_stats=reference_stats,
        reconstruction_row=bool(e.get("reconstruction_row", False)),
        save_samples=save_samples,
        **optional,
    )
