"""The evaluation job: every loop count of one checkpoint, scored against real data.

Each loop count sees the same class-balanced labels and the same per-batch seeds, so the rows of
the table differ only in L. A finished loop count is written to ``loops/L{L}.json`` at once
(atomically, with a hash of everything that determines it); a rerun with the same settings skips
it, so an interrupted long sweep resumes instead of starting over. Under torchrun the batches are
shared among the ranks (see LoopSweep.score) and rank 0 alone scores and writes.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm.auto import tqdm

from elt.core import schedules
from elt.core.flops import gflops_per_sample
from elt.runtime import precision
from elt.runtime.checkpoint import load_run, relocate_data
from elt.runtime.config import ConfigError, instantiate_group, require_int
from elt.runtime.devices import pick_device
from elt.runtime.loggers import eval_logger_config
from elt.evaluation import judges
from elt.runtime.distributed import Ranks
from elt.evaluation.preflight import check_sampler, require_creatable_dir
from elt.evaluation.baselines import IndependentTokens
from elt.evaluation.extractors import I3D, FeatureExtractor, InceptionV3, JudgeExtractor
from elt.runtime.files import file_fingerprint, fingerprint, write_text_atomic
from elt.evaluation.plots import MAX_GIF_FPS, quality_figure, save_animation, save_figure, save_grid
from elt.evaluation.tables import log_to_loggers, quality_metrics, write_tables
from elt.evaluation.scoring import Scorer, balanced_subset, dataset_batch, load_reference_npz, reference_statistics

log = logging.getLogger(__name__)
STANDARD_EXTRACTORS = {"inception": InceptionV3, "i3d": I3D}
ROW_FORMAT = 2  # bump when a row's content changes meaning: old loops/*.json are then recomputed


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
        **optional,
    )


def build_extractors(names: list[str], cfg: DictConfig, train_cfg: DictConfig, datamodule) -> list[FeatureExtractor]:
    dataset = datamodule.name
    modality = "video" if len(datamodule.image_shape) == 4 else "image"
    if names == ["auto"]:  # the dataset's own judge where one exists, else the literature's network
        names = ["judge"] if dataset in judges.JUDGES else (["inception"] if modality == "image" else ["i3d"])
    out = []
    for name in names:
        if name in STANDARD_EXTRACTORS:
            out.append(STANDARD_EXTRACTORS[name](OmegaConf.select(cfg, f"eval.weights.{name}")))
            continue
        if name not in ("judge", judges.judge_name(dataset)):
            raise ConfigError(f"eval.extractors: {name!r} is not the judge of dataset {dataset!r} ({judges.judge_name(dataset)})")
        net, info = judges.load_or_train_judge(dataset, datamodule, train_cfg.data.module, cfg.paths.cache_dir)
        out.append(JudgeExtractor(net, info, modality))
    return out


def judges_and_references(cfg: DictConfig, train_cfg: DictConfig, s: Settings, device: torch.device,
                          num_classes: int, ranks: Ranks, npz: dict | None = None):
    """-> (datamodule, extractors, {extractor: real statistics}): the judge trained and the statistics
    computed on a cache miss (statistics on rank 0 only). Shared with ``elt.jobs.warm``, which
    fills these caches before evaluations that run side by side would each fill them."""
    with ranks.main_first():  # rank 0 writes the data and judge caches, the others read them
        datamodule = instantiate(train_cfg.data.module)
        datamodule.setup()
        extractors = [e.to(device) for e in build_extractors(s.extractors, cfg, train_cfg, datamodule)]
    names = [e.name for e in extractors]
    if npz is not None and "inception" not in names:
        raise ConfigError(f"eval.reference_stats holds InceptionV3 statistics, but eval.extractors gives {names}; "
                          "add inception to eval.extractors or set eval.reference_stats=null")
    split = {"train": datamodule.train_dataset, "val": datamodule.val_dataset}[s.reference_split]
    references = {  # only rank 0 scores
        e.name: npz if npz is not None and e.name == "inception" else reference_statistics(
            e, split, f"{datamodule.name}_{s.reference_split}", judges.data_key(train_cfg.data.module),
            cfg.paths.cache_dir, s.batch_size, device, per_class=s.reference_per_class, num_classes=num_classes)
        for e in extractors
    } if ranks.main else {}
    return datamodule, extractors, references


def schedule_key(spec) -> str:
    """The cache file (and grid) name of a schedule row: its name with only safe characters."""
    key = "S_" + "".join(c if c.isalnum() or c in "-." else "_" for c in schedules.name(spec))
    return key if len(key) <= 80 else f"{key[:60]}_{fingerprint(schedules.name(spec))}"  # long explicit lists


def balanced_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ...: every prefix (every batch, every IS split) is near-balanced."""
    return torch.arange(num_classes).repeat(per_class)


def sampled_batch(sample_fn, labels: torch.Tensor, batch_size: int, seed: int, device: torch.device, i: int):
    """Batch i always gets labels[i·B:(i+1)·B] and a generator seeded by (seed, i), whatever the
    loop count and whichever rank draws it, so every row of the table starts from identical noise."""
    y = labels[i * batch_size:(i + 1) * batch_size]
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
    x = sample_fn(y, gen)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return x.float(), y  # bf16 autocast may leave bf16 samples: the extractors take fp32


class RowCache:
    """``loops/<key>.json`` per finished row, valid only for the settings hash it was made with."""

    def __init__(self, directory: Path, settings_hash: str):
        self.dir, self.hash = Path(directory), settings_hash

    def get(self, key: str) -> dict | None:
        try:
            saved = json.loads((self.dir / f"{key}.json").read_text())
        except (OSError, ValueError):  # missing or unreadable: recompute
            return None
        return saved["row"] if saved.get("settings") == self.hash else None

    def put(self, key: str, row: dict) -> None:
        write_text_atomic(self.dir / f"{key}.json", json.dumps({"settings": self.hash, "row": row}, indent=2))

    def get_or_compute(self, key: str, compute, ranks: Ranks) -> dict | None:
        """Rank 0 reads and writes the cache; every rank learns from it whether to take part in
        ``compute`` (a collective). Ranks > 0 get None."""
        row = self.get(key) if ranks.main else None
        if ranks.broadcast(row is not None):
            log.info("%s: already done with these settings (%s), skipped", key, self.dir / f"{key}.json")
            return row
        row = compute()
        if ranks.main:
            self.put(key, row)
        return row


def make_row(name: str, kind: str, n: int, metrics: dict, loops: int | None = None, extrapolated: bool = False,
             gflops: float | None = None, seconds: float | None = None) -> dict:
    return {"name": name, "row": kind, "loops": loops, "extrapolated": extrapolated, "num_samples": n,
            "gflops_per_sample": gflops, "wall_s_per_sample": None if seconds is None else seconds / n, **metrics}


def pick_for_grid(labels: torch.Tensor, need: dict[int, int]) -> list[int]:
    """Indices of the samples still needed for the grid; decrements ``need`` per class."""
    take = []
    for i, c in enumerate(labels.tolist()):
        if need.get(c, 0) > 0:
            need[c] -= 1
            take.append(i)
    return take


class LoopSweep:
    """One checkpoint against fixed real statistics: the reference rows, then every loop count.

    With several ranks, batch i of every row is drawn by rank i % world and scored on rank 0 in
    batch order, so the table does not depend on the number of ranks."""

    def __init__(self, cfg: DictConfig, model, train_cfg: DictConfig, s: Settings, sampler: dict, device: torch.device,
                 sample_precision: str, ranks: Ranks, npz: dict | None = None):
        self.model, self.train_cfg, self.s, self.sampler, self.device = model, train_cfg, s, sampler, device
        self.precision, self.ranks = sample_precision, ranks
        self.out_dir = Path(cfg.eval.output_dir)
        datamodule, self.extractors, self.references = judges_and_references(
            cfg, train_cfg, s, device, model.num_classes, ranks, npz)
        self.splits = {"train": datamodule.train_dataset, "val": datamodule.val_dataset}
        self.video = len(datamodule.image_shape) == 4
        data_key = judges.data_key(train_cfg.data.module)
        self.npz = npz  # eval.reference_stats, loaded and checked by evaluate() before any work
        self.labels = balanced_labels(model.num_classes, s.samples_per_class)
        step = max(1, model.num_classes // s.grid_max_classes)
        self.grid_classes = list(range(0, model.num_classes, step))[: s.grid_max_classes]
        common = {
            "format": ROW_FORMAT, "per_class": s.samples_per_class, "batch": s.batch_size, "seed": s.seed,
            "extractors": [e.fingerprint for e in self.extractors], "reference": s.reference_split, "data": data_key,
            "is_splits": s.is_splits, "pr_k": s.pr_k, "grid": [s.grid_per_class, self.grid_classes],
        }
        if self.video:  # videos: the animated grids are part of a row's output
            common["gif_fps"] = s.gif_fps
        # keyed only when set, so rows cached before these options existed stay valid
        common.update({k: v for k, v in [("reference_stats", npz and npz["fingerprint"]),
                                         ("reference_per_class", s.reference_per_class)] if v is not None})
        self.trivial_per_class = None  # None: the whole training split
        if s.trivial_fit_items is not None and s.trivial_fit_items // model.num_classes < len(self.splits["train"]):
            self.trivial_per_class = max(1, s.trivial_fit_items // model.num_classes)
        ckpt = file_fingerprint(Path(cfg.ckpt_path))
        self.common = {**common, "ckpt": ckpt, "precision": sample_precision}  # what any model row depends on but the sampler
        self.model_rows = RowCache(self.out_dir / "loops", fingerprint({**self.common, "sampler": sampler}))
        trivial = {"trivial_per_class": self.trivial_per_class} if self.trivial_per_class else {}
        self.ref_rows = RowCache(self.out_dir / "loops", fingerprint({**common, "floor": s.floor_split, **trivial}))

    def rows(self) -> list[dict]:
        """The table's rows on rank 0; Nones elsewhere."""
        rows, ranks = [], self.ranks
        if self.s.reference_rows:
            rows.append(self.ref_rows.get_or_compute("ref_real", self.real_row, ranks))
            if self.s.reconstruction_row:
                rows.append(self.ref_rows.get_or_compute("ref_reconstructed", self.reconstruction_row, ranks))
            if self.trivial_tokenizer() is not None:
                rows.append(self.ref_rows.get_or_compute("ref_trivial", self.trivial_row, ranks))
            elif ranks.main:
                log.warning("no trivial independent-token row: the data config has no tokenizer, or its file "
                            "(data.tokenizer.path) is not on this machine")
        for L in tqdm(self.s.loops, desc="loop counts", unit="L", disable=not (self.s.progress and ranks.main)):
            rows.append(self.model_rows.get_or_compute(f"L{L}", lambda L=L: self.model_row(L), ranks))
        for spec in self.s.schedules:
            key = schedule_key(spec)
            rows.append(self.model_rows.get_or_compute(key, lambda spec=spec: self.schedule_row(spec), ranks))
        return rows

    def reference_sources(self) -> dict[str, str]:
        """What each extractor's reference statistics were computed on, for the table header (rank 0)."""
        s, items = self.s, "videos" if self.video else "images"
        out = {}
        for name, ref in self.references.items():
            if ref is self.npz:
                n = f" ({ref['n']} images)" if ref.get("n") is not None else ""
                out[name] = f"ADM reference batch {ref['path']}{n}"
            else:
                bound = f" (at most {s.reference_per_class} per class)" if s.reference_per_class else ""
                out[name] = f"real {s.reference_split} split, {int(ref['n'])} {items}{bound}, cached"
        return out

    def model_row(self, L: int) -> dict | None:
        scored = self.sampled_scores(L, f"L{L}", f"sample+score L={L}")
        return scored and make_row("model", "model", len(self.labels), scored[0], loops=L, extrapolated=L > self.model.Lmax,
                                   gflops=gflops_per_sample(self.model, L, self.sampler), seconds=scored[1])

    def schedule_row(self, spec) -> dict | None:
        """A loop schedule's row beside the fixed-L ones: same labels and seeds; ``loops`` is its
        mean loop count, GFLOPs are summed over its steps."""
        from elt.samplers.budget import resolve_schedule

        plan = resolve_schedule(self.model, spec, self.sampler)
        label = schedules.name(spec)
        scored = self.sampled_scores(list(plan), schedule_key(spec), f"sample+score {label}")
        return scored and make_row(f"schedule {label}", "schedule", len(self.labels), scored[0],
                                   loops=round(sum(plan) / len(plan), 3), extrapolated=max(plan) > self.model.Lmax,
                                   gflops=gflops_per_sample(self.model, plan, self.sampler), seconds=scored[1])

    def sampled_scores(self, loops, key: str, desc: str, sampler: dict | None = None, seed: int | None = None,
                       labels: torch.Tensor | None = None, early_exit=None, stats: list | None = None):
        """``score`` of the model's samples at ``loops`` (an int or a schedule): by default this
        sweep's sampler, seed and labels; pareto varies them. ``stats``, a list, receives each
        batch's ``model.sample`` stats (loops and heads run per sample and step)."""
        sampler = self.sampler if sampler is None else sampler
        labels = self.labels if labels is None else labels
        seed = self.s.seed if seed is None else seed

        def sample(y, g):
            extra = {} if early_exit is None else {"early_exit": early_exit}
            if stats is not None:
                extra["stats"] = {}
                stats.append(extra["stats"])
            with precision.autocast(self.device.type, self.precision):
                return self.model.sample(y, loops=loops, generator=g, progress=False, **extra, **sampler)

        batch = lambda i: sampled_batch(sample, labels, self.s.batch_size, seed, self.device, i)  # noqa: E731
        return self.score(batch, len(labels), key, desc)

    def floor_row(self, kind: str, transform=None) -> dict | None:
        """The class-balanced floor-split images, through ``transform`` if given, scored as row ``kind``."""
        floor = balanced_subset(self.splits[self.s.floor_split], self.s.samples_per_class, self.model.num_classes)

        def batch(i):
            x, y = dataset_batch(floor, self.s.batch_size, i)
            if transform is None:
                return x, y
            with torch.no_grad():
                return transform(x.to(self.device)), y

        scored = self.score(batch, len(floor), kind, f"score {kind} {self.s.floor_split}")
        return scored and make_row(f"{kind} ({self.s.floor_split} split)", kind, len(floor), scored[0])

    def real_row(self) -> dict | None:
        """The floor: real held-out images against the same reference set."""
        return self.floor_row("real")

    def reconstruction_row(self) -> dict | None:
        """The stage-one floor (rFID's row): the floor row's images encoded and decoded by the model's
        own tokenizer or autoencoder. No sampler can beat it by much, so a model row near it is limited
        by stage one, not by the generator."""
        coder = getattr(self.model, "tokenizer", None) or getattr(self.model, "autoencoder", None)
        return self.floor_row("reconstructed", lambda x: coder.decode(coder.encode(x)).float().clamp(0, 1))

    def trivial_tokenizer(self):
        """The tokens of the trivial row: the model's own tokenizer, or for a latent/pixel model the
        data config's, unless that one is a pretrained file this machine lacks (a DiT-ELT run on
        ImageNet needs no VQ tokenizer, and its evaluation should not demand one)."""
        if getattr(self.model, "tokenizer", None) is not None:
            return self.model.tokenizer
        if not hasattr(self, "_trivial_tokenizer"):
            node = self.train_cfg.data.get("tokenizer")
            path = node.get("path") if node is not None else None
            if node is None or (path is not None and not Path(str(path)).exists()):
                self._trivial_tokenizer = None
            else:
                self._trivial_tokenizer = instantiate(node)
        return self._trivial_tokenizer

    def trivial_row(self) -> dict | None:
        """Tokens drawn on the CPU whatever the eval device, so its samples are the same everywhere;
        fitted from at most ``eval.trivial_fit_items`` training items (class-balanced), encoded and
        decoded on the eval device."""
        s, k = self.s, self.model.num_classes
        tokenizer = self.trivial_tokenizer()
        train = self.splits["train"]
        if self.trivial_per_class:  # ImageNet: 50 per class, not all 1.28M images through the VQ encoder
            train = balanced_subset(train, self.trivial_per_class, k)
        trivial = IndependentTokens(tokenizer, k).fit(train, device=self.device)
        sample = lambda y, g: trivial.sample(y, g, device=self.device)  # noqa: E731
        batch = lambda i: sampled_batch(sample, self.labels, s.batch_size, s.seed, torch.device("cpu"), i)  # noqa: E731
        scored = self.score(batch, len(self.labels), "trivial", "score trivial model")
        return scored and make_row("trivial (independent tokens)", "trivial", len(self.labels), scored[0], gflops=0.0,
                                   seconds=scored[1])

    def score(self, batch, total: int, key: str, desc: str) -> tuple[dict, float] | None:
        """Metrics of one source, ``batch(i) -> (samples, labels)`` for i < ⌈total/B⌉, and the
        seconds spent producing its samples (scoring excluded), on rank 0; None on the others.

        Each round, rank k draws and featurises batch round·world + k; rank 0 folds the round's
        outputs in batch order. The seconds are summed over the ranks: one device's sampling time,
        so ``wall_s_per_sample`` compares across world sizes (the row's wall clock shrinks with K).
        The first ``grid_per_class`` samples of each shown class go to ``grids/<key>.png`` (videos
        as filmstrips, and animated as ``grids/<key>.gif`` and, with ffmpeg, ``.mp4``)."""
        s, ranks = self.s, self.ranks
        scorer = Scorer(self.extractors, self.device, keep_features=bool(s.pr_k))
        need = {c: s.grid_per_class for c in self.grid_classes}
        shown_x, shown_y, seconds = [], [], 0.0
        n_batches = math.ceil(total / s.batch_size)
        with tqdm(total=total, desc=desc, unit="sample", leave=False, disable=not (s.progress and ranks.main)) as bar:
            for first in range(0, n_batches, ranks.world):
                mine = None
                if first + ranks.rank < n_batches:
                    t0 = time.perf_counter()
                    x, y = batch(first + ranks.rank)
                    dt = time.perf_counter() - t0
                    # this batch's candidates for the grid: rank 0 keeps those still needed
                    cand = pick_for_grid(y, {c: s.grid_per_class for c in self.grid_classes})
                    mine = {"out": scorer.extract(x), "y": y.cpu(), "x_shown": x[cand].cpu(), "y_shown": y[cand].cpu(),
                            "seconds": dt}
                for got in ranks.gather(mine) or []:  # rank order = batch order; empty off rank 0
                    if got is None:  # past the last batch
                        continue
                    scorer.accumulate(got["out"], got["y"])
                    seconds += got["seconds"]
                    take = pick_for_grid(got["y_shown"], need)
                    if take:
                        shown_x.append(got["x_shown"][take])
                        shown_y.append(got["y_shown"][take])
                    bar.update(len(got["y"]))
        if not ranks.main:
            return None
        if shown_x:
            x, y, grids = torch.cat(shown_x), torch.cat(shown_y), self.out_dir / "grids"
            save_grid(x, y, grids / f"{key}.png", s.grid_per_class, self.grid_classes)
            if x.ndim == 5:
                save_animation(x, y, grids / f"{key}.gif", s.grid_per_class, self.grid_classes, s.gif_fps)
        return scorer.metrics(self.references, s.is_splits, s.pr_k), seconds


def evaluate(cfg: DictConfig) -> dict:
    """Sweep the checkpoint's loop counts; write table, plots, grids; log. Returns rows and paths
    (on rank 0 of a torchrun launch; the other ranks return an empty dict)."""
    ranks = Ranks.from_env()
    if not ranks.main:  # one voice: rank 0 logs, the others only warn
        logging.getLogger().setLevel(logging.WARNING)
    model, train_cfg, s, sampler, device, sample_precision, npz = prepare(cfg, ranks)
    ranks.init(device)
    try:
        sweep = LoopSweep(cfg, model, train_cfg, s, sampler, device, sample_precision, ranks, npz)
        rows = sweep.rows()
        result = report(cfg, train_cfg, model, s, sampler, sample_precision, sweep, rows) if ranks.main else {}
        ranks.barrier()  # the others wait for rank 0's files
        return result
    finally:
        ranks.close()


def stored_run(cfg: DictConfig):
    """-> (model, training config) of ``cfg.ckpt_path``, its data moved to where eval's ``data.*`` say."""
    model, train_cfg = load_run(cfg.ckpt_path)
    return model, relocate_data(train_cfg, **{k: OmegaConf.select(cfg, f"data.{k}") for k in ("raw_root", "root")})


def prepare(cfg: DictConfig, ranks: Ranks):
    """Every check and load before a sweep (shared with elt.jobs.pareto): -> (model, train_cfg,
    settings, sampler, device, sampling precision, reference npz or None)."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path is required: pass ckpt_path=<run dir>/checkpoints/last.ckpt")
    require_creatable_dir(cfg.eval.output_dir, "eval.output_dir")
    device = pick_device(cfg.eval.get("device", "auto"), ranks)
    sample_precision = precision.resolve(cfg.eval.get("precision", "auto"), device.type, "eval.precision")
    model, train_cfg = stored_run(cfg)
    model.to(device)
    s = read_settings(cfg, model.Lmax, model.num_classes)
    if cfg.eval.sampler is not None and not OmegaConf.is_dict(cfg.eval.sampler):
        raise ConfigError(f"eval.sampler must be a mapping like {{steps: 16}}, got {cfg.eval.sampler!r}")
    sampler = check_sampler(model.sampler_config(
        **(OmegaConf.to_container(cfg.eval.sampler, resolve=True) if cfg.eval.sampler else {})))
    npz = load_reference_npz(s.reference_stats, s.pr_k) if s.reference_stats is not None else None
    return model, train_cfg, s, sampler, device, sample_precision, npz


def report(cfg, train_cfg, model, s: Settings, sampler, sample_precision, sweep: LoopSweep, rows) -> dict:
    out_dir = sweep.out_dir
    meta = describe(cfg, train_cfg, model, s, sampler, sample_precision, sweep.extractors, sweep.reference_sources())
    table = write_tables(rows, meta, out_dir)
    print(table)
    metrics = quality_metrics(rows)
    title = f"{train_cfg.run_name}: {model.N}N×{model.Lmax}L"
    curve = [r for r in rows if r["row"] != "schedule"]  # schedule rows are points, not reference lines
    figures = {}
    for name, x, xlabel in [("quality_vs_loops", "loops", "loop count L"),
                            ("quality_vs_gflops", "gflops_per_sample", "GFLOPs per sample")]:
        fig = quality_figure(curve, metrics, x, xlabel, title)
        if x == "gflops_per_sample":
            add_schedule_points(fig, rows, metrics)
        figures[name] = save_figure(fig, out_dir / f"{name}.png")
    grids = {L: out_dir / "grids" / f"L{L}.png" for L in s.loops if (out_dir / "grids" / f"L{L}.png").is_file()}
    log_to_loggers(build_loggers(cfg, train_cfg), rows, meta, figures, grids)
    return {"rows": rows, "table": table, "output_dir": str(out_dir), "figures": {k: str(v) for k, v in figures.items()}}


def add_schedule_points(fig, rows: list[dict], metrics: list[str]) -> None:
    """The schedule rows as labelled diamonds on the quality-vs-GFLOPs panels, beside the fixed-L curve."""
    points = [r for r in rows if r["row"] == "schedule" and r.get("gflops_per_sample") is not None]
    if not points:
        return
    for ax, m in zip(fig.axes, metrics):
        sel = [r for r in points if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
        ax.scatter([r["gflops_per_sample"] for r in sel], [r[m] for r in sel], marker="D", color="C3", zorder=3,
                   label="loop schedules")
        for r in sel:
            ax.annotate(r["name"].removeprefix("schedule "), (r["gflops_per_sample"], r[m]), textcoords="offset points",
                        xytext=(4, -8), fontsize=6, color="C3")
    fig.axes[0].legend(fontsize=7)


def describe(cfg, train_cfg, model, s: Settings, sampler, sample_precision: str, extractors,
             references: dict[str, str]) -> dict:
    evals = model.network_evals_per_sample(**sampler)
    video = any(e.modality == "video" for e in extractors)
    items, standard = ("videos", "I3D FVD") if video else ("images", "InceptionV3 FID")
    hparams = {
        "ckpt_path": str(cfg.ckpt_path), "train_run": train_cfg.run_name, "model": train_cfg.model.name,
        "data": train_cfg.data.name, "N": model.N, "Lmax": model.Lmax,
        "ilsd": bool(OmegaConf.select(train_cfg, "ilsd.enabled", default=False)),
        "samples_per_class": s.samples_per_class, "seed": s.seed, "network_evals_per_sample": evals,
        "sampling_precision": sample_precision,
        **{f"sampler/{k}": v for k, v in sampler.items()},
    }
    header = [
        f"**{train_cfg.run_name}** ({hparams['model']} {model.N}N×{model.Lmax}L, ILSD {'on' if hparams['ilsd'] else 'off'}) "
        f"from `{cfg.ckpt_path}`",
        f"{s.samples_per_class * model.num_classes} samples per row ({s.samples_per_class} per class), seed {s.seed}, "
        f"{evals} network evaluations per sample, sampled in {'bf16 autocast' if sample_precision == 'bf16' else 'fp32'} "
        "(features in fp32); sampler: " + ", ".join(f"{k}={v}" for k, v in sampler.items()),
        "Reference statistics: " + ("; ".join(f"{k}: {v}" for k, v in references.items())
                                    if len(set(references.values())) > 1 else next(iter(references.values()))) + ".",
    ]
    for e in extractors:
        if e.info.get("val_accuracy") is not None:
            aux = (f" (auxiliary {e.info['aux_target']} head: {100 * e.info['val_aux_accuracy']:.1f}%)"
                   if e.info.get("aux_target") else "")
            header.append(f"Judge {e.name}: trained on the real training split, held-out accuracy "
                          f"{100 * e.info['val_accuracy']:.1f}% on {e.info['val_items']} {items}{aux}; "
                          f"*_{e.name} metrics are in its feature space, not comparable with {standard}.")
    return {"hparams": hparams, "header": [line + "  " for line in header[:-1]] + header[-1:],
            "extractors": {e.name: {"fingerprint": e.fingerprint, **e.info} for e in extractors}}


def build_loggers(cfg: DictConfig, train_cfg: DictConfig) -> list:
    """The eval config's loggers, resolved against the evaluated run's training config (W&B groups
    eval runs with their training runs): ``elt.runtime.loggers.eval_logger_config``."""

    if not cfg.get("logger"):
        return []
    return instantiate_group(eval_logger_config(cfg, train_cfg))
