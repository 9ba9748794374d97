"""The rows of an evaluation: every loop count (and loop schedule) of one checkpoint, and the
reference rows, scored against fixed real statistics.

Each loop count sees the same class-balanced labels and the same per-batch seeds, so the rows of
the table differ only in L. A finished row is written to ``loops/<key>.json`` at once (atomically,
with a hash of everything that determines it); a rerun with the same settings skips it, so an
interrupted long sweep resumes instead of starting over. Under torchrun the batches are shared
among the ranks (see LoopSweep.score) and rank 0 alone scores and writes.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from elt.core import schedules
from elt.core.flops import gflops_per_sample
from elt.evaluation import judges
from elt.evaluation.baselines import IndependentTokens
from elt.evaluation.plots import save_animation, save_grid
from elt.evaluation.references import judges_and_references
from elt.evaluation.samples import SampleParts
from elt.evaluation.scoring import Scorer, balanced_subset, dataset_batch
from elt.evaluation.settings import Settings
from elt.runtime import precision
from elt.runtime.distributed import Ranks
from elt.runtime.files import file_fingerprint, fingerprint, write_text_atomic
from elt.runtime.kernels import cpu_kernels

log = logging.getLogger(__name__)
ROW_FORMAT = 2  # bump when a row's content changes meaning: old loops/*.json are then recomputed


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
        # keyed only when set: without them a row's key is that of the plain settings
        common.update({k: v for k, v in [("reference_stats", npz and npz["fingerprint"]),
                                         ("reference_per_class", s.reference_per_class)] if v is not None})
        self.trivial_per_class = None  # None: the whole training split
        if s.trivial_fit_items is not None and s.trivial_fit_items // model.num_classes < len(self.splits["train"]):
            self.trivial_per_class = max(1, s.trivial_fit_items // model.num_classes)
        ckpt = file_fingerprint(Path(cfg.ckpt_path))
        self.common = {**common, "ckpt": ckpt, "precision": sample_precision}  # what any model row depends on but the sampler
        if cpu_kernels() != "auto":  # keyed only when not the default, so rows cached under auto stay valid
            self.common["cpu_kernels"] = cpu_kernels()
        saving = {"save_samples": True} if s.save_samples else {}  # a rerun that asks for the files draws the rows again
        self.model_rows = RowCache(self.out_dir / "loops", fingerprint({**self.common, "sampler": sampler, **saving}))
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
        scored = self.sampled_scores(L, f"L{L}", f"sample+score L={L}", save=self.s.save_samples)
        return scored and make_row("model", "model", len(self.labels), scored[0], loops=L, extrapolated=L > self.model.Lmax,
                                   gflops=gflops_per_sample(self.model, L, self.sampler), seconds=scored[1])

    def schedule_row(self, spec) -> dict | None:
        """A loop schedule's row beside the fixed-L ones: same labels and seeds; ``loops`` is its
        mean loop count, GFLOPs are summed over its steps."""
        from elt.samplers.budget import resolve_schedule

        plan = resolve_schedule(self.model, spec, self.sampler)
        label = schedules.name(spec)
        scored = self.sampled_scores(list(plan), schedule_key(spec), f"sample+score {label}", save=self.s.save_samples)
        return scored and make_row(f"schedule {label}", "schedule", len(self.labels), scored[0],
                                   loops=round(sum(plan) / len(plan), 3), extrapolated=max(plan) > self.model.Lmax,
                                   gflops=gflops_per_sample(self.model, plan, self.sampler), seconds=scored[1])

    def sampled_scores(self, loops, key: str, desc: str, sampler: dict | None = None, seed: int | None = None,
                       labels: torch.Tensor | None = None, early_exit=None, stats: list | None = None,
                       save: bool = False):
        """``score`` of the model's samples at ``loops`` (an int or a schedule): by default this
        sweep's sampler, seed and labels; pareto varies them. ``stats``, a list, receives each
        batch's ``model.sample`` stats (loops and heads run per sample and step); ``save`` keeps the
        samples as ``samples/<key>.npz``."""
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
        return self.score(batch, len(labels), key, desc, save=save)

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

    def score(self, batch, total: int, key: str, desc: str, save: bool = False) -> tuple[dict, float] | None:
        """Metrics of one source, ``batch(i) -> (samples, labels)`` for i < ⌈total/B⌉, and the
        seconds spent producing its samples (scoring excluded), on rank 0; None on the others.

        Each round, rank k draws and featurises batch round·world + k; rank 0 folds the round's
        outputs in batch order. The seconds are summed over the ranks: one device's sampling time,
        so ``wall_s_per_sample`` compares across world sizes (the row's wall clock shrinks with K).
        The first ``grid_per_class`` samples of each shown class go to ``grids/<key>.png`` (videos
        as filmstrips, and animated as ``grids/<key>.gif`` and, with ffmpeg, ``.mp4``). With ``save``
        each rank also writes the batches it drew, which rank 0 assembles into ``samples/<key>.npz``."""
        s, ranks = self.s, self.ranks
        scorer = Scorer(self.extractors, self.device, keep_features=bool(s.pr_k))
        need = {c: s.grid_per_class for c in self.grid_classes}
        shown_x, shown_y, seconds = [], [], 0.0
        n_batches = math.ceil(total / s.batch_size)
        parts = SampleParts(self.out_dir / "samples", key) if save else None
        with tqdm(total=total, desc=desc, unit="sample", leave=False, disable=not (s.progress and ranks.main)) as bar:
            for first in range(0, n_batches, ranks.world):
                mine = None
                if first + ranks.rank < n_batches:
                    t0 = time.perf_counter()
                    x, y = batch(first + ranks.rank)
                    dt = time.perf_counter() - t0
                    if parts is not None:
                        parts.write(first + ranks.rank, x, y)
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
        if parts is not None:  # every rank wrote its parts before the last gather returned
            log.info("%s: samples in %s", key, parts.assemble(n_batches))
        if shown_x:
            x, y, grids = torch.cat(shown_x), torch.cat(shown_y), self.out_dir / "grids"
            save_grid(x, y, grids / f"{key}.png", s.grid_per_class, self.grid_classes)
            if x.ndim == 5:
                save_animation(x, y, grids / f"{key}.gif", s.grid_per_class, self.grid_classes, s.gif_fps)
        return scorer.metrics(self.references, s.is_splits, s.pr_k), seconds
