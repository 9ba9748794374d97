"""The prepare job: read each raw split once, encode it with the model family's tokenizer (MaskGIT-ELT)
or autoencoder (DiT-ELT), and write webdataset shards that train.py streams (elt.data.shards).

It runs through Lightning's ``trainer.predict`` on 1..N devices: rank r of R encodes the items
i % R == r in order and writes its own ``shard-r{r}-{n:05d}.tar``; when all ranks are done, rank 0
writes ``index.json``. Interrupted, a rerun with the same settings keeps every finished shard and
redoes the partial ones; different settings (encoder, preprocessing, shard plan) are refused.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from elt.data.shards.format import (FORMAT, INDEX, PROGRESS, check_compatible, encoder_fingerprint, plan_rank,
                                    preprocessing, read_index, stored_format)
from elt.data.shards.writer import RankShardWriter, merge_records
from elt.runtime.cli import one_line
from elt.runtime.config import ConfigError, require_int
from elt.runtime.files import write_text_atomic
from elt.runtime.precision import lightning_precision

log = logging.getLogger(__name__)


class EncodeItems(Dataset):
    """This rank's pending items of a raw split; an unreadable one becomes ``{"error": ...}``, so the
    main process reports (or, with skip_bad, counts) it rather than a worker's traceback."""

    def __init__(self, raw, items: list[int]):
        self.raw, self.items = raw, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> dict:
        i = self.items[j]
        try:
            item = self.raw[i]
        except ValueError as e:
            return {"index": i, "error": one_line(e)}
        return {"index": i, "image": item["image"], "label": int(item["label"]), "key": str(item["key"])}


def collate_items(items: list[dict]) -> dict:
    good = [x for x in items if "error" not in x]
    out = {"seen": [x["index"] for x in items], "errors": {x["index"]: x["error"] for x in items if "error" in x}}
    if good:
        out.update(image=torch.stack([x["image"] for x in good]), label=[x["label"] for x in good],
                   key=[x["key"] for x in good], index=[x["index"] for x in good])
    return out


class EncodeModule(L.LightningModule):
    """Frozen encoder (an nn.Module one is moved to the device with this module)."""

    def __init__(self, encoder, skip_bad: bool):
        super().__init__()
        self.encoder, self.skip_bad = encoder, skip_bad

    def predict_step(self, batch, batch_idx):
        if batch["errors"] and not self.skip_bad:
            raise ValueError(next(iter(batch["errors"].values())) + " (set data.skip_bad=true to leave it out)")
        values = self.encoder.encode(batch["image"]).detach().cpu().numpy() if "image" in batch else None
        return {"values": values}


class SplitData(L.LightningDataModule):
    """The predict loader of one split for this rank: only the items of its unfinished shards."""

    def __init__(self, raw, split_dir: Path, fmt: dict, shard_size: int, batch_size: int, num_workers: int):
        super().__init__()
        self.raw, self.dir, self.fmt = raw, split_dir, fmt
        self.shard_size, self.batch_size, self.num_workers = shard_size, batch_size, num_workers
        self.writer: RankShardWriter | None = None

    def predict_dataloader(self):
        world, rank = self.trainer.world_size, self.trainer.global_rank
        plan = plan_rank(len(self.raw), world, rank, self.shard_size)
        self.writer = RankShardWriter(self.dir, rank, plan, self.fmt)
        self.writer.discard_partial()
        items = self.writer.pending_items()
        kept = len(plan) - len(self.writer.pending)
        if kept:
            log.info("%s rank %d: %d finished shard(s) kept, %d to write", self.dir.name, rank, kept,
                     len(self.writer.pending))
        return DataLoader(EncodeItems(self.raw, items), batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=collate_items, shuffle=False)


class ShardWriterCallback(BasePredictionWriter):
    """Appends each encoded batch to the rank's shards; when every rank is done, rank 0 writes the index."""

    def __init__(self, settings: dict):
        super().__init__(write_interval="batch")
        self.settings, self.skipped = settings, 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        writer: RankShardWriter = trainer.datamodule.writer
        values = prediction["values"]
        row = {i: j for j, i in enumerate(batch.get("index", []))}
        for i in batch["seen"]:
            if i in row:
                j = row[i]
                writer.add(i, batch["key"][j], values[j], batch["label"][j])
                writer.seen(i)
            else:
                log.warning("%s; skipped (data.skip_bad=true)", batch["errors"][i])
                self.skipped += 1
                writer.seen(i, skipped=True)

    def on_exception(self, trainer, pl_module, exception):
        writer = getattr(trainer.datamodule, "writer", None)
        if writer is not None:
            writer.abort()

    def on_predict_end(self, trainer, pl_module):
        writer: RankShardWriter = trainer.datamodule.writer
        if writer.pending:  # shards whose last item never came (cannot happen with a whole loader): keep them out
            raise RuntimeError(f"prepare: {len(writer.pending)} shard(s) of rank {trainer.global_rank} not finished")
        trainer.strategy.barrier("prepare_index")
        if trainer.is_global_zero:
            split_dir = writer.dir
            index = merge_records(split_dir, self.settings)
            write_text_atomic(split_dir / INDEX, json.dumps(index, indent=1))
        trainer.strategy.barrier("prepare_index_written")


def check_config(cfg: DictConfig) -> list[str]:
    """Everything that can be checked before reading a file; returns the splits to prepare."""
    data = cfg.data
    if data.get("raw_root") in (None, "", "None", "null"):
        raise ConfigError(f"data.raw_root is not set: point it at the raw {data.name} data; "
                          f"{data.get('how_to_get') or 'see the data config'}")
    if not data.get("root"):
        raise ConfigError("data.root is not set: the directory the shards are written to")
    raw = data.get("raw")
    if not OmegaConf.is_dict(raw) or not raw:
        raise ConfigError(f"data.raw: data={data.name} names no raw reader per split (data.raw.train, data.raw.val)")
    splits = cfg.prepare.get("splits") or list(raw.keys())
    unknown = [s for s in splits if s not in raw]
    if unknown:
        raise ConfigError(f"prepare.splits: {unknown} not in data.raw ({list(raw.keys())})")
    for key in ("shard_size", "batch_size"):
        require_int(cfg, f"prepare.{key}", 1)
    if "tokenizer" not in cfg.model and "autoencoder" not in cfg.model:
        raise ConfigError(f"model={cfg.model.get('name')}: has neither a tokenizer nor an autoencoder to encode with")
    return list(splits)


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


def prepare(cfg: DictConfig) -> dict:
    """Encode every configured split into ``<data.root>/<split>/``; returns each split's index."""
    splits = check_config(cfg)
    readers = {s: instantiate(cfg.data.raw[s], _convert_="all") for s in splits}
    shapes = {s: check_reader(cfg, s, r) for s, r in readers.items()}
    encoder = build_encoder(cfg)
    fmt, fp = stored_format(encoder), encoder_fingerprint(encoder)
    skip_bad = bool(cfg.data.get("skip_bad", False))
    precision = lightning_precision(cfg.trainer.get("precision", "32-true"), str(cfg.trainer.get("accelerator", "cpu")))

    def make_trainer(callback):
        return instantiate(cfg.trainer, callbacks=[callback], logger=False, precision=precision,
                           use_distributed_sampler=False, enable_checkpointing=False)

    root, results = Path(cfg.data.root), {}
    probe = make_trainer(ShardWriterCallback({}))
    world = probe.num_nodes * probe.num_devices
    del probe
    plans = {}
    for split in splits:  # every check before any encoding
        reader, split_dir = readers[split], root / split
        node = OmegaConf.to_container(cfg.data.raw[split], resolve=True)
        settings = {"format": FORMAT, "split": split, **fmt, "encoder": type(encoder).__name__, "fingerprint": fp,
                    "preprocessing": preprocessing(node, reader), "num_items": len(reader), "world_size": world,
                    "shard_size": int(cfg.prepare.shard_size), "image_shape": shapes[split],
                    "num_classes": int(cfg.data.num_classes), "classes": list(getattr(reader, "classes", []) or [])}
        existing = read_index(split_dir)
        check_compatible(split_dir, existing, settings)
        plans[split] = (settings, existing)
    for split in splits:
        settings, existing = plans[split]
        split_dir = root / split
        if existing is not None and existing.get("complete"):
            log.info("%s: %s is complete (%d samples in %d shards); nothing to do", split, split_dir,
                     existing["num_samples"], len(existing["shards"]))
            results[split] = existing
            continue
        split_dir.mkdir(parents=True, exist_ok=True)
        (split_dir / PROGRESS).mkdir(exist_ok=True)
        if existing is None and rank_zero_only.rank == 0:  # claims the directory for these settings
            write_text_atomic(split_dir / INDEX, json.dumps(
                {"settings": settings, "complete": False, "shards": []}, indent=1))
        callback = ShardWriterCallback(settings)
        trainer = make_trainer(callback)
        data = SplitData(readers[split], split_dir, fmt, settings["shard_size"], int(cfg.prepare.batch_size),
                         int(cfg.prepare.get("num_workers", 0)))
        trainer.predict(EncodeModule(encoder, skip_bad), datamodule=data, return_predictions=False)
        index = read_index(split_dir)
        results[split] = index
        if trainer.is_global_zero:
            log.info("%s: %d samples in %d shards%s -> %s", split, index["num_samples"], len(index["shards"]),
                     f", {index['skipped']} unreadable item(s) skipped" if index["skipped"] else "", split_dir)
    return results
