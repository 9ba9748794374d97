"""The prepare job: read each raw split once, encode it with the model family's tokenizer (MaskGIT-ELT)
or autoencoder (DiT-ELT), and write webdataset shards that train.py streams (elt.data.shards).

It runs through Lightning's ``trainer.predict`` on 1..N devices: shard n (items [n·S, (n+1)·S)) is
written by rank n % R; when all ranks are done, rank 0 merges the shards' sidecars into
``index.json``. Every rank's loader walks all its shards' items, those of shards finished by an
earlier run as markers that are neither decoded nor encoded, so a rank with nothing left to do still
reaches the merge. Killed at any point, the same command (on any number of ranks) keeps every
finished shard and redoes the rest, byte-identical to an uninterrupted run: nothing depends on the
rank or worker counts, and an AutoencoderKL's posterior is stored as its mean and log-variance
(``prepare.posterior=distribution``) or sampled from a generator seeded by (``prepare.seed``, key).
SIGTERM / SIGUSR1 stop each rank at its next shard boundary (exit 143 / 138).
"""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from elt.data.shards.format import (FORMAT, check_compatible, check_sidecars, encoder_fingerprint, plan_shards,
                                    preprocessing, read_index, stored_format)
from elt.data.shards.writer import ShardWriter, merge_index, write_index
from elt.runtime.cli import one_line
from elt.jobs.prepare_checks import check_config
from elt.runtime import rundir
from elt.runtime.config import ConfigError
from elt.runtime.precision import lightning_precision
from elt.runtime.resume import Preempted, mix_seed, restore_signals

log = logging.getLogger(__name__)
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class EncodeItems(Dataset):
    """This rank's items of a raw split; those of finished shards (and the -1 of a rank without
    shards) are markers, never decoded; an unreadable one becomes ``{"error": ...}``, so the main
    process reports (or, with skip_bad, counts) it rather than a worker's traceback."""

    def __init__(self, raw, items: list[int], done: set[int]):
        self.raw, self.items, self.done = raw, items or [-1], done

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> dict:
        i = self.items[j]
        if i < 0 or i in self.done:
            return {"index": i, "done": True}
        try:
            item = self.raw[i]
        except ValueError as e:
            return {"index": i, "error": one_line(e)}
        out = {"index": i, "image": item["image"], "label": int(item["label"]), "key": str(item["key"]),
               "padded": bool(item.get("padded", False))}
        if "image_flip" in item:
            out["image_flip"] = item["image_flip"]
        return out


def collate_items(items: list[dict]) -> dict:
    good = [x for x in items if "error" not in x and "done" not in x]
    out = {"seen": [x["index"] for x in items], "errors": {x["index"]: x["error"] for x in items if "error" in x}}
    if good:
        out.update(image=torch.stack([x["image"] for x in good]), label=[x["label"] for x in good],
                   key=[x["key"] for x in good], index=[x["index"] for x in good], padded=[x["padded"] for x in good])
        if "image_flip" in good[0]:
            out["image_flip"] = torch.stack([x["image_flip"] for x in good])
    return out


class EncodeModule(L.LightningModule):
    """Frozen encoder (an nn.Module one is moved to the device with this module)."""

    def __init__(self, encoder, fmt: dict, seed: int, skip_bad: bool):
        super().__init__()
        self.encoder, self.fmt, self.seed, self.skip_bad = encoder, fmt, int(seed), skip_bad

    def encode(self, images: torch.Tensor, keys: list[str]) -> torch.Tensor:
        posterior = self.fmt.get("posterior")
        if posterior is None:
            return self.encoder.encode(images)
        moments = self.encoder.posterior(images).float()  # [B, 2, *latent]: scaled mean, log-variance
        if posterior == "distribution":
            return moments
        noise = torch.stack([torch.randn(moments.shape[2:], generator=torch.Generator().manual_seed(mix_seed(self.seed, k)))
                             for k in keys]).to(moments.device)  # one stream per sample: any batch, rank, worker
        return moments[:, 0] + torch.exp(0.5 * moments[:, 1]) * noise

    def predict_step(self, batch, batch_idx):
        if batch["errors"] and not self.skip_bad:
            raise ValueError(next(iter(batch["errors"].values())) + " (set data.skip_bad=true to leave it out)")
        if "image" not in batch:
            return {}
        out = {"": self.encode(batch["image"], batch["key"]).detach().cpu().numpy()}
        if "image_flip" in batch:
            out["flip"] = self.encode(batch["image_flip"], [k + "|flip" for k in batch["key"]]).detach().cpu().numpy()
        return out


class SplitData(L.LightningDataModule):
    """The predict loader of one split for this rank: every item of its shards, in order."""

    def __init__(self, raw, split_dir: Path, fmt: dict, settings: dict, batch_size: int, num_workers: int):
        super().__init__()
        self.raw, self.dir, self.fmt, self.settings = raw, split_dir, fmt, settings
        self.batch_size, self.num_workers = batch_size, num_workers
        self.writer: ShardWriter | None = None

    def predict_dataloader(self):
        world, rank = self.trainer.world_size, self.trainer.global_rank
        plan = plan_shards(len(self.raw), self.settings["shard_size"])
        self.writer = ShardWriter(self.dir, rank, world, plan, self.fmt, self.settings)
        self.writer.discard_partial()
        kept = len(self.writer.mine) - len(self.writer.pending)
        if kept:
            log.info("%s rank %d: %d finished shard(s) kept, %d to write", self.dir.name, rank, kept,
                     len(self.writer.pending))
        return DataLoader(EncodeItems(self.raw, self.writer.my_items(), self.writer.done_items()),
                          batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate_items,
                          shuffle=False)


class ShardWriterCallback(BasePredictionWriter):
    """Appends each encoded batch to the rank's shards and stops at a shard boundary once a stop
    signal came; when every rank is done, rank 0 writes the index."""

    def __init__(self, settings: dict, report: dict):
        super().__init__(write_interval="batch")
        self.settings, self.report = settings, report
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def on_predict_start(self, trainer, pl_module) -> None:
        """After Lightning's own handlers are in place (it notes SIGTERM, which we also read)."""
        try:
            for name in STOP_SIGNALS:
                s = getattr(signal, name)
                self._previous[s] = signal.getsignal(s)
                signal.signal(s, self._handle)
        except ValueError:  # not the main thread
            pass

    def restore(self) -> None:
        self._previous = restore_signals(self._previous)

    def stop_here(self, trainer, writer: ShardWriter) -> None:
        signum = self.received or (signal.SIGTERM if getattr(trainer, "received_sigterm", False) else None)
        if signum is None or writer.current is not None:
            return
        writer.abort()
        print(f"{signal.Signals(signum).name}: prepare stopped at a shard boundary on rank {trainer.global_rank} "
              f"({writer.closed} shard(s) finished by this run are kept, {len(writer.pending)} to go in {writer.dir}); "
              f"rerun the same command to resume", file=sys.stderr, flush=True)
        raise Preempted(128 + int(signum))

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        writer: ShardWriter = trainer.datamodule.writer
        row = {i: j for j, i in enumerate(batch.get("index", []))}
        for i in batch["seen"]:
            if i in row:
                j = row[i]
                writer.add(i, batch["key"][j], {k: v[j] for k, v in prediction.items()}, batch["label"][j],
                           padded=batch["padded"][j])
                writer.seen(i)
            elif i in batch["errors"]:
                log.warning("%s; skipped (data.skip_bad=true)", batch["errors"][i])
                writer.seen(i, skipped=True)
            self.stop_here(trainer, writer)

    def on_exception(self, trainer, pl_module, exception):
        self.restore()
        writer = getattr(trainer.datamodule, "writer", None)
        if writer is not None:
            writer.abort()

    def on_predict_end(self, trainer, pl_module):
        self.restore()
        writer: ShardWriter = trainer.datamodule.writer
        if writer.pending:  # shards whose last item never came (cannot happen with a whole loader): keep them out
            raise RuntimeError(f"prepare: {len(writer.pending)} shard(s) of rank {trainer.global_rank} not finished")
        trainer.strategy.barrier("prepare_index")
        if trainer.is_global_zero:
            write_index(writer.dir, merge_index(writer.dir, self.settings, self.report))
        trainer.strategy.barrier("prepare_index_written")


def build_encoder(cfg: DictConfig):
    """The family's encoder, exactly as training builds it (model.tokenizer / model.autoencoder)."""
    node = cfg.model.tokenizer if "tokenizer" in cfg.model else cfg.model.autoencoder
    return instantiate(node, _convert_="all")


def check_reader(cfg: DictConfig, split: str, reader) -> list[int]:
    """Class count and item shape agree with the data config; returns the first item's shape."""
    classes = getattr(reader, "classes", None)
    if classes is not None and len(classes) != cfg.data.num_classes:
        raise ConfigError(f"data.num_classes={cfg.data.num_classes} but the {split} reader found {len(classes)} classes "
                          f"under {cfg.data.raw_root}")
    try:
        shape = list(reader[0]["image"].shape)
    except ValueError:  # an unreadable first file: found (and reported or skipped) while encoding
        return list(cfg.data.image_shape)
    if shape != list(cfg.data.image_shape):
        raise ConfigError(f"data.raw.{split} gives items of shape {shape}, data.image_shape is {list(cfg.data.image_shape)}")
    return shape


def summary(index: dict) -> str:
    """The counted drops of a split: nothing is left out without a number."""
    parts = [f"{index.get(k, 0)} {what}" for k, what in (("skipped", "unreadable item(s) skipped"),
                                                        ("padded", "short clip(s) padded with their last frame"),
                                                        ("missing", "list entr(ies) whose file is missing"))
             if index.get(k)]
    return "; " + ", ".join(parts) if parts else ""


def prepare(cfg: DictConfig) -> dict:
    """Encode every configured split into ``<data.root>/<split>/``; returns each split's index."""
    splits = check_config(cfg)
    readers = {s: instantiate(cfg.data.raw[s], _convert_="all") for s in splits}
    shapes = {s: check_reader(cfg, s, r) for s, r in readers.items()}
    encoder = build_encoder(cfg)
    posterior, seed = str(cfg.prepare.get("posterior", "distribution")), int(cfg.prepare.seed)
    fp = encoder_fingerprint(encoder)
    skip_bad = bool(cfg.data.get("skip_bad", False))
    precision = lightning_precision(cfg.trainer.get("precision", "32-true"), str(cfg.trainer.get("accelerator", "cpu")))

    def make_trainer(callback):
        return instantiate(cfg.trainer, callbacks=[callback], logger=False, precision=precision,
                           use_distributed_sampler=False, enable_checkpointing=False)

    root, results, plans = Path(cfg.data.root), {}, {}
    for split in splits:  # every check before any encoding
        reader, split_dir = readers[split], root / split
        fmt = stored_format(encoder, posterior, flips=getattr(reader, "flip", "none") == "random")
        node = OmegaConf.to_container(cfg.data.raw[split], resolve=True)
        settings = {"format": FORMAT, "split": split, **fmt, "encoder": type(encoder).__name__, "fingerprint": fp,
                    "preprocessing": preprocessing(node, reader), "num_items": len(reader),
                    "shard_size": int(cfg.prepare.shard_size), "image_shape": shapes[split],
                    "num_classes": int(cfg.data.num_classes), "classes": list(getattr(reader, "classes", []) or []),
                    "seed": seed if fmt.get("posterior") == "sample" else None}
        existing = read_index(split_dir)
        check_compatible(split_dir, existing, settings)
        if not (existing or {}).get("complete"):
            check_sidecars(split_dir, settings)
        plans[split] = (fmt, settings, existing)
    for split in splits:
        fmt, settings, existing = plans[split]
        split_dir = root / split
        if existing is not None and existing.get("complete"):
            log.info("%s: %s is complete (%d samples in %d shards); nothing to do", split, split_dir,
                     existing["num_samples"], len(existing["shards"]))
            results[split] = existing
            continue
        rundir.started()  # every check passed: a later failure keeps what was written
        split_dir.mkdir(parents=True, exist_ok=True)
        if existing is None and rank_zero_only.rank == 0:  # claims the directory for these settings
            write_index(split_dir, {"settings": settings, "complete": False, "num_samples": 0, "shards": []})
        report = {"missing": len(getattr(readers[split], "missing", []) or [])}
        trainer = make_trainer(ShardWriterCallback(settings, report))
        data = SplitData(readers[split], split_dir, fmt, settings, int(cfg.prepare.batch_size),
                         int(cfg.prepare.get("num_workers", 0)))
        trainer.predict(EncodeModule(encoder, fmt, seed, skip_bad), datamodule=data, return_predictions=False)
        index = read_index(split_dir)
        results[split] = index
        if trainer.is_global_zero:
            log.info("%s: %d samples in %d shards -> %s%s", split, index["num_samples"], len(index["shards"]),
                     split_dir, summary(index))
    return results
