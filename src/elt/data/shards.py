"""Encoded datasets as webdataset shards: written once by ``prepare.py``, streamed by ``train.py``.

Layout: ``<root>/<split>/shard-r{rank}-{n:05d}.tar`` (per sample ``<key>.tokens.npy`` int16/int32 or
``<key>.latent.npy`` float16, and ``<key>.cls``) plus ``<root>/<split>/index.json``: samples per
shard, shape, dtype, preprocessing and the tokenizer / autoencoder fingerprint. Shards are written
to a temporary name and renamed into place when whole, and each rank records its finished shards
in ``_progress/rank{r}.json``, so an interrupted prepare keeps them and redoes only the partial one.

Training stream (``ShardDataModule``). Epoch ``e`` is a permutation of the training shards drawn
from ``(seed, e)``; rank ``r`` of ``R`` reads every R-th shard of it and DataLoader worker ``w`` of
``W`` every W-th of those, through a shuffle buffer seeded by ``(seed, e, r, w)``; each rank yields
a fixed number of batches per epoch (the split's samples / R / batch, a multiple of W), continuing
into the next permutation if its shards run short. With equal shards the ranks and workers see
disjoint samples that together cover the epoch. The stream is a pure function of (seed, epoch,
rank, worker), so resume is exact when the number of ranks and workers is unchanged: a run
resumed mid-epoch skips the batches already trained on (read, not decoded). With other counts the
resumed run sees a fresh but still deterministic stream of the same epoch.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import tarfile
from pathlib import Path
from typing import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from elt.runtime.config import ConfigError
from elt.runtime.files import file_fingerprint, fingerprint, write_text_atomic
from elt.data.sampler import ResumablePosition

log = logging.getLogger(__name__)

FORMAT = 1
INDEX = "index.json"
PROGRESS = "_progress"
FIELDS = {"tokens": "tokens.npy", "latent": "latent.npy"}
CROPS = {"ImageNetRaw": "adm_center_crop", "ImageFolderRaw": "adm_center_crop", "UCF101Raw": "resize_center_crop"}


# ------------------------------------------------------------------------------- what is stored

def encoder_kind(encoder) -> str:
    """``tokens`` for a Tokenizer (MaskGIT-ELT), ``latent`` for an Autoencoder (DiT-ELT)."""
    return "tokens" if hasattr(encoder, "vocab_size") else "latent"


def encoder_fingerprint(encoder) -> str:
    """The encoder's own ``fingerprint`` (pretrained wrappers hash their weights), else a hash of its
    class, shapes and, for TorchScript files, the file's content."""
    own = getattr(encoder, "fingerprint", None)
    if isinstance(own, str) and own:
        return own
    desc = {"class": type(encoder).__qualname__}
    for attr in ("levels", "vocab_size", "grid_shape", "image_shape", "latent_shape", "scale"):
        if hasattr(encoder, attr):
            value = getattr(encoder, attr)
            desc[attr] = list(value) if isinstance(value, tuple) else value
    path = getattr(getattr(encoder, "net", None), "path", None)
    if path is not None:
        desc["file"] = file_fingerprint(path)
    return fingerprint(desc)


def stored_format(encoder) -> dict:
    """Field, dtype and per-sample shape of what ``encoder.encode`` gives, as the shards store it."""
    kind = encoder_kind(encoder)
    if kind == "tokens":
        dtype = "int16" if encoder.vocab_size <= np.iinfo(np.int16).max + 1 else "int32"
        return {"kind": kind, "field": FIELDS[kind], "dtype": dtype, "shape": [int(encoder.num_tokens)],
                "vocab_size": int(encoder.vocab_size)}
    return {"kind": kind, "field": FIELDS[kind], "dtype": "float16", "shape": [int(s) for s in encoder.latent_shape]}


def preprocessing(reader_cfg: dict, reader) -> dict:
    """What makes two encodings of a split comparable: the reader and its settings (not where the
    raw files live or whether unreadable ones are skipped)."""
    name = type(reader).__name__
    out = {"reader": name, "crop": CROPS.get(name, getattr(reader, "crop", name))}
    out.update({k: v for k, v in reader_cfg.items() if k not in ("_target_", "raw_root", "root", "skip_bad")})
    return out


def shard_name(rank: int, n: int) -> str:
    return f"shard-r{rank}-{n:05d}.tar"


def safe_key(key: str) -> str:
    """webdataset splits a member name at the first dot of its basename: keys keep none."""
    return key.replace(".", "_")


def plan_rank(num_items: int, world: int, rank: int, shard_size: int) -> list[tuple[str, list[int]]]:
    """Rank ``rank``'s shards: items i with i % world == rank, in order, ``shard_size`` per shard."""
    mine = list(range(rank, num_items, world))
    return [(shard_name(rank, n), mine[s:s + shard_size]) for n, s in enumerate(range(0, len(mine), shard_size))]


def read_index(split_dir: Path) -> dict | None:
    path = Path(split_dir) / INDEX
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to rewrite the split") from None


def check_compatible(split_dir: Path, existing: dict | None, settings: dict) -> None:
    """Refuse, in one line, to add to a split written with another encoder or other preprocessing
    (or, while it is unfinished, another shard plan)."""
    if existing is None:
        return
    old = existing.get("settings", {})
    where = f"refusing to add to {split_dir}"
    if old.get("fingerprint") != settings["fingerprint"]:
        raise ConfigError(f"{where}: its shards were encoded by {old.get('encoder')} (fingerprint {old.get('fingerprint')}), "
                          f"this run's is {settings['encoder']} ({settings['fingerprint']}); use another data.root "
                          f"or delete the directory")
    differ = sorted(k for k in set(old.get("preprocessing", {})) | set(settings["preprocessing"])
                    if old.get("preprocessing", {}).get(k) != settings["preprocessing"].get(k))
    if differ:
        was = {k: old.get("preprocessing", {}).get(k) for k in differ}
        now = {k: settings["preprocessing"].get(k) for k in differ}
        raise ConfigError(f"{where}: it was written with other preprocessing ({was} there, {now} now); "
                          f"use another data.root or delete the directory")
    for key, what in (("format", "stored format"), ("num_items", "number of raw items"),
                      ("world_size", "number of ranks (trainer.devices x trainer.num_nodes)"),
                      ("shard_size", "prepare.shard_size")):
        if old.get(key) != settings[key] and not (existing.get("complete") and key in ("world_size", "shard_size")):
            raise ConfigError(f"{where}: its {what} was {old.get(key)}, this run's is {settings[key]}; resume with "
                              f"the same, or use another data.root")


# ------------------------------------------------------------------------------- writing

class RankShardWriter:
    """One rank's shards of one split, written in plan order. A shard goes to a temporary name and
    is renamed into place when its last planned item has been seen; the rank's record
    (``_progress/rank{r}.json``) then lists it, so a rerun keeps it."""

    def __init__(self, split_dir: Path, rank: int, plan: list[tuple[str, list[int]]], fmt: dict):
        self.dir, self.rank, self.fmt = Path(split_dir), rank, fmt
        self.record_path = self.dir / PROGRESS / f"rank{rank}.json"
        self.record = self.read_record()
        self.pending = [(name, items) for name, items in plan if not self.finished(name)]
        self.last_of = {items[-1]: name for name, items in self.pending}
        self.current, self.tar, self.count, self.skipped = None, None, 0, 0

    def read_record(self) -> dict:
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return {}

    def finished(self, name: str) -> bool:
        entry, path = self.record.get(name), self.dir / name
        return entry is not None and path.is_file() and path.stat().st_size == entry["bytes"]

    def pending_items(self) -> list[int]:
        return [i for _, items in self.pending for i in items]

    def open(self, name: str) -> None:
        import webdataset as wds

        tmp = self.dir / f".{name}.tmp"
        self.current, self.count, self.skipped = name, 0, 0
        self.tar = wds.TarWriter(str(tmp), encoder=False, mtime=0)  # same items, same bytes

    def add(self, index: int, key: str, value: np.ndarray, label: int) -> None:
        if self.tar is None:
            self.open(self.pending[0][0])
        buf = io.BytesIO()
        np.save(buf, value.astype(self.fmt["dtype"]), allow_pickle=False)
        self.tar.write({"__key__": safe_key(key), self.fmt["field"]: buf.getvalue(), "cls": str(int(label)).encode()})
        self.count += 1

    def seen(self, index: int, skipped: bool = False) -> None:
        """Item ``index`` was written (or skipped as unreadable); closes its shard if it was the last."""
        if skipped:
            if self.tar is None:
                self.open(self.pending[0][0])
            self.skipped += 1
        if index in self.last_of:
            self.close(self.last_of[index])

    def abort(self) -> None:
        """An interrupted run: the open shard stays a temporary file, which the rerun redoes."""
        if self.tar is not None:
            self.tar.close()
            self.tar = None

    def close(self, name: str) -> None:
        if self.tar is None:
            self.open(name)
        self.tar.close()
        tmp, final = self.dir / f".{name}.tmp", self.dir / name
        os.replace(tmp, final)
        self.record[name] = {"samples": self.count, "skipped": self.skipped, "bytes": final.stat().st_size}
        write_text_atomic(self.record_path, json.dumps(self.record, indent=1))
        self.pending = [(n, items) for n, items in self.pending if n != name]
        self.tar, self.current = None, None


def merge_records(split_dir: Path, settings: dict) -> dict:
    """The finished index from every rank's record (rank 0 calls this once all ranks are done)."""
    split_dir = Path(split_dir)
    shards, skipped = [], 0
    for rank in range(settings["world_size"]):
        path = split_dir / PROGRESS / f"rank{rank}.json"
        record = json.loads(path.read_text()) if path.is_file() else {}
        for name, entry in sorted(record.items()):
            shards.append({"name": name, "samples": entry["samples"], "bytes": entry["bytes"]})
            skipped += entry.get("skipped", 0)
    expected = sum(len(plan_rank(settings["num_items"], settings["world_size"], r, settings["shard_size"]))
                   for r in range(settings["world_size"]))
    return {"settings": settings, "complete": len(shards) == expected, "num_samples": sum(s["samples"] for s in shards),
            "skipped": skipped, "shards": sorted(shards, key=lambda s: s["name"])}


# ------------------------------------------------------------------------------- reading

class ShardError(ValueError):
    """A damaged shard or sample: names the shard and the key."""

    def __init__(self, url: str, key: str | None, reason: str, lost: int = 1):
        where = f"sample {key}" if key else "its first sample"
        super().__init__(f"corrupt shard {url}: {where}: {reason} (set data.skip_bad=true to skip bad samples)")
        self.url, self.key, self.lost = url, key, lost


def read_shard(url: str) -> Iterator[dict]:
    """The samples of one tar file in order, as ``{"__key__", "__url__", <ext>: bytes}``; a tar that
    cannot be read raises ShardError naming the key being read (or the last whole one)."""
    sample, key, last_whole = None, None, None
    try:
        with open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                base = os.path.basename(member.name)
                prefix, _, ext = base.partition(".")
                key = os.path.join(os.path.dirname(member.name), prefix)
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise EOFError(f"{member.name} truncated ({len(data)} of {member.size} bytes)")
                if sample is not None and sample["__key__"] != key:
                    yield sample
                    last_whole = sample["__key__"]
                    sample = None
                if sample is None:
                    sample = {"__key__": key, "__url__": url}
                sample[ext] = data
    except (tarfile.TarError, EOFError, OSError) as e:
        near = key if key is not None else last_whole
        raise ShardError(url, near, f"unreadable tar ({type(e).__name__}: {e})") from None
    if sample is not None:
        yield sample


def decode_sample(sample: dict, fmt: dict) -> tuple[np.ndarray, int, str]:
    url, key = sample["__url__"], sample["__key__"]
    try:
        value = np.load(io.BytesIO(sample[fmt["field"]]), allow_pickle=False)
        label = int(sample["cls"].decode())
    except KeyError as e:
        raise ShardError(url, key, f"no {e.args[0]} member") from None
    except Exception as e:
        raise ShardError(url, key, f"cannot decode ({type(e).__name__}: {e})") from None
    if list(value.shape) != list(fmt["shape"]) or str(value.dtype) != fmt["dtype"]:
        raise ShardError(url, key, f"{fmt['field']} is {value.dtype}{list(value.shape)}, the index says "
                                   f"{fmt['dtype']}{fmt['shape']}")
    return value, label, key


def collate(values: list[np.ndarray], labels: list[int], keys: list[str], kind: str) -> dict:
    x = torch.from_numpy(np.stack(values))
    x = x.long() if kind == "tokens" else x.float()
    return {kind: x, "label": torch.tensor(labels, dtype=torch.long), "key": keys}


def stream_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class ShardStream(IterableDataset):
    """Collated batches from one split's shards for one rank (see the module docstring).

    ``train=True``: the epoch's shard permutation, shuffle buffer, ``batches`` batches per epoch
    (split evenly over workers), skipping ``skip`` batches of the resumed epoch. ``train=False``: the
    rank's shards in order, every sample once, the last batch partial. Damaged samples raise
    ShardError, or with ``skip_bad`` are counted (``"skipped"`` in the next batch) until more than
    ``max_bad_fraction`` of the samples of the shards opened so far are bad. Errors travel as
    ``{"error": message}`` batches so the main process reports them in one line."""

    def __init__(self, split_dir: Path, index: dict, batch_size: int, rank: int, world: int, train: bool,
                 seed: int = 0, batches: int = 0, shuffle_buffer: int = 1000, skip_bad: bool = False,
                 max_bad_fraction: float = 0.0, workers: int = 0):
        self.workers = workers  # the DataLoader's, for the length of a validation pass
        self.dir, self.index, self.fmt = Path(split_dir), index, index["settings"]
        self.shards = [s for s in index["shards"] if s["samples"] > 0]
        self.batch_size, self.rank, self.world, self.train, self.seed = batch_size, rank, world, train, seed
        self.batches, self.shuffle_buffer = batches, shuffle_buffer
        self.skip_bad, self.max_bad_fraction = skip_bad, max_bad_fraction
        self.epoch, self.skip = 0, 0

    def __len__(self) -> int:
        """Batches per epoch on this rank; validation: every worker's batches, its last one partial."""
        if self.train:
            return self.batches
        return sum(math.ceil(sum(s["samples"] for s in shards) / self.batch_size)
                   for w in range(max(1, self.workers)) for shards in self.passes(w, max(1, self.workers)))

    def worker(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def passes(self, w: int, workers: int) -> Iterator[list[dict]]:
        """This worker's shards: once in order (val), or per pass k = 0, 1, ... its share of the
        permutation drawn from (seed, epoch, k) (train; pass 0 is the epoch, later passes only
        serve a worker whose shards ran short)."""
        if not self.train:
            mine = self.shards[self.rank::self.world] if len(self.shards) >= self.world else self.shards
            yield mine[w::workers]
            return
        for k in range(10**9):
            order = np.random.default_rng([self.seed, self.epoch, k]).permutation(len(self.shards))
            yield [self.shards[i] for i in order[self.rank::self.world][w::workers]]

    def samples(self, shards: list[dict], stats: dict) -> Iterator[dict]:
        for shard in shards:
            url, read = str(self.dir / shard["name"]), 0
            stats["opened"] += shard["samples"]
            try:
                for sample in read_shard(url):
                    read += 1
                    yield sample
            except ShardError as e:
                self.bad(e, stats, max(shard["samples"] - read, 1))

    def bad(self, e: ShardError, stats: dict, lost: int) -> None:
        if not self.skip_bad:
            raise e
        stats["bad"] += lost
        if stats["bad"] > self.max_bad_fraction * max(stats["opened"], 1):
            raise ValueError(f"{stats['bad']} of {stats['opened']} samples in the shards read so far are unreadable, "
                             f"more than data.max_bad_fraction={self.max_bad_fraction} (last: {e})")
        log.warning("skipped %d bad sample(s): %s", lost, e)

    def stream(self, w: int, workers: int, stats: dict) -> Iterator[dict]:
        """Undecoded samples; in training each pass goes through its own shuffle buffer, so the
        buffer never mixes an epoch's samples with the next pass's."""
        import random

        import webdataset as wds

        rng = random.Random(stream_seed(self.seed, self.epoch, self.rank, w))
        for shards in self.passes(w, workers):
            source = self.samples(shards, stats)
            if self.train:
                source = wds.filters._shuffle(source, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
            yield from source

    def __iter__(self):
        w, workers = self.worker()
        stats = {"opened": 0, "bad": 0}
        try:
            source = self.stream(w, workers, stats)
            quota = None
            if self.train:
                skip = self.skip // workers + (w < self.skip % workers)
                for _ in zip(range(skip * self.batch_size), source):  # the resumed epoch's batches already trained on
                    pass
                quota = self.batches // workers - skip
            yield from self.batched(source, stats, quota)
        except ValueError as e:  # ShardError, too many bad samples
            yield {"error": " ".join(str(e).split())}

    def batched(self, source: Iterator[dict], stats: dict, quota: int | None) -> Iterator[dict]:
        """Decoded, collated batches: ``quota`` full ones (train), or all, the last partial (val)."""
        values, labels, keys, made, reported = [], [], [], 0, 0
        if quota is not None and quota <= 0:
            return
        for sample in source:
            try:
                value, label, key = decode_sample(sample, self.fmt)
            except ShardError as e:
                self.bad(e, stats, 1)
                continue
            values.append(value), labels.append(label), keys.append(key)
            if len(values) == self.batch_size:
                yield {**collate(values, labels, keys, self.fmt["kind"]), "skipped": stats["bad"] - reported}
                reported, made = stats["bad"], made + 1
                values, labels, keys = [], [], []
                if quota is not None and made >= quota:
                    return
        if values and quota is None:
            yield {**collate(values, labels, keys, self.fmt["kind"]), "skipped": stats["bad"] - reported}


class EpochLoader(DataLoader):
    """Tells its ShardStream the epoch (the trainer's, so a resumed run continues its numbering)
    and how many batches of it to skip, before each pass starts its workers."""

    def __init__(self, dataset: ShardStream, epoch_fn, resume: dict, **kw):
        super().__init__(dataset, batch_size=None, persistent_workers=False, **kw)
        self.epoch_fn, self.resume = epoch_fn, resume

    def __iter__(self):
        epoch = int(self.epoch_fn())
        self.dataset.epoch = epoch
        self.dataset.skip = self.resume["batches"] if epoch == self.resume["epoch"] else 0
        return super().__iter__()


# ------------------------------------------------------------------------------- datamodule

def prepare_hint(name: str, root: Path) -> str:
    return (f"write them once with: python prepare.py data={name} model=<maskgit_elt|dit_elt> data.raw_root=<raw data> "
            f"data.root={root}")


class ShardDataModule(ResumablePosition, L.LightningDataModule):
    """Training and validation from the shards prepare.py wrote (module docstring); real images for
    evaluation (``train_dataset`` / ``val_dataset``) from the raw reader of ``raw`` when
    ``raw_root`` is set, decoded only as items are read."""

    def __init__(self, root: str, batch_size: int, name: str, num_classes: int, image_shape, num_workers: int = 0,
                 raw: dict | None = None, raw_root: str | None = None, shuffle_buffer: int = 1000,
                 skip_bad: bool = False, max_bad_fraction: float = 0.001, train_split: str = "train",
                 val_split: str = "val"):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if not 0 <= float(max_bad_fraction) < 1:
            raise ValueError(f"data.max_bad_fraction must be in [0, 1), got {max_bad_fraction}")
        self.root, self.batch_size, self.num_workers = Path(root), int(batch_size), int(num_workers)
        self.name, self.num_classes, self.image_shape = name, int(num_classes), tuple(int(s) for s in image_shape)
        self.raw, self.raw_root = dict(raw or {}), raw_root
        self.shuffle_buffer, self.skip_bad, self.max_bad_fraction = int(shuffle_buffer), bool(skip_bad), float(max_bad_fraction)
        self.splits = {"train": train_split, "val": val_split}
        self.shuffle_seed = 0
        self.index: dict[str, dict | None] = {}
        self._resume = {"epoch": 0, "batches": 0}
        self._raw_cache: dict[str, object] = {}
        self.skipped = 0

    # ---- shards --------------------------------------------------------------------------------
    def split_dir(self, stage: str) -> Path:
        return self.root / self.splits[stage]

    def load_index(self, stage: str, required: bool) -> dict | None:
        d = self.split_dir(stage)
        index = read_index(d)
        if index is None:
            if required:
                raise FileNotFoundError(f"{self.name}: data directory not found: no shards at {d / INDEX}; "
                                        f"{prepare_hint(self.name, self.root)}")
            return None
        if not index.get("complete"):
            raise FileNotFoundError(f"{self.name}: {d} is only partly written ({len(index.get('shards', []))} shards); "
                                    f"rerun prepare.py with the same settings to finish it")
        return index

    def setup(self, stage: str | None = None):
        if stage in (None, "fit", "validate") and not self.index:  # None (evaluation): shards optional
            self.index = {"train": self.load_index("train", stage == "fit"),
                          "val": self.load_index("val", stage == "validate")}
            if self.trainer is not None:
                self.check_model(self.trainer.lightning_module)

    def check_model(self, model) -> None:
        """The model must consume what the shards hold, encoded by the encoder it decodes with."""
        encoder = getattr(model, "tokenizer", None) or getattr(model, "autoencoder", None)
        if encoder is None:
            return
        for stage, index in self.index.items():
            if index is None:
                continue
            s = index["settings"]
            want, fp = stored_format(encoder), encoder_fingerprint(encoder)
            if s["kind"] != want["kind"]:
                raise ConfigError(f"{self.split_dir(stage)} holds {s['kind']} but {type(model).__name__} trains on "
                                  f"{want['kind']}: point data.root at shards prepared with this model family")
            if s["fingerprint"] != fp:
                raise ConfigError(f"{self.split_dir(stage)} was encoded by {s['encoder']} (fingerprint {s['fingerprint']}), "
                                  f"the model's {type(encoder).__name__} is {fp}: train with the encoder the shards "
                                  f"were prepared with (data.tokenizer / data.autoencoder)")
            if list(s["shape"]) != want["shape"]:
                raise ConfigError(f"{self.split_dir(stage)}: samples are {s['shape']}, the model expects {want['shape']}")

    def ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def batches_per_epoch(self, index: dict, world: int) -> int:
        workers = max(1, self.num_workers)
        per_rank = index["num_samples"] // world // self.batch_size // workers * workers
        if per_rank < 1:
            raise ConfigError(f"data.batch_size ({self.batch_size}) x {world} rank(s) x {workers} worker(s) is more than "
                              f"the {index['num_samples']} training samples in {self.split_dir('train')}: no full "
                              f"batch per worker to train on")
        shards = sum(1 for s in index["shards"] if s["samples"] > 0)
        if shards < world * workers:
            raise ConfigError(f"{self.split_dir('train')} has {shards} shards, fewer than {world} rank(s) x {workers} "
                              f"worker(s) (data.num_workers): lower data.num_workers or prepare with a smaller "
                              f"prepare.shard_size")
        return per_rank

    def train_dataloader(self):
        world, rank = self.ranks()
        index = self.index.get("train") or self.load_index("train", True)
        stream = ShardStream(self.split_dir("train"), index, self.batch_size, rank, world, train=True,
                             seed=self.shuffle_seed, batches=self.batches_per_epoch(index, world),
                             shuffle_buffer=self.shuffle_buffer, skip_bad=self.skip_bad,
                             max_bad_fraction=self.max_bad_fraction)
        epoch_fn = (lambda: self.trainer.current_epoch) if self.trainer is not None else (lambda: stream.epoch)
        return EpochLoader(stream, epoch_fn, self._resume, num_workers=self.num_workers)

    def val_dataloader(self):
        index = self.index.get("val")
        if index is None:
            log.info("%s: no validation shards in %s: validation skipped", self.name, self.split_dir("val"))
            return []
        world, rank = self.ranks()
        workers = min(self.num_workers, len(index["shards"]))
        stream = ShardStream(self.split_dir("val"), index, self.batch_size, rank, world, train=False,
                             skip_bad=self.skip_bad, max_bad_fraction=self.max_bad_fraction, workers=workers)
        return DataLoader(stream, batch_size=None, num_workers=workers)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Errors from the loader workers as one line; skipped samples counted and logged."""
        if "error" in batch:
            raise ValueError(batch["error"])
        skipped = int(batch.pop("skipped", 0))
        if skipped:
            self.skipped += skipped
            log.warning("%s: %d bad sample(s) skipped so far (data.skip_bad=true)", self.name, self.skipped)
        return batch

    def teardown(self, stage: str | None = None):
        if self.skipped:
            log.warning("%s: %d bad sample(s) skipped in total on this rank", self.name, self.skipped)


    # ---- real images (evaluation) ---------------------------------------------------------------
    def raw_dataset(self, stage: str):
        split = self.splits[stage]
        if split not in self._raw_cache:
            if self.raw_root in (None, "", "None", "null"):
                return RawUnavailable(self, stage)
            if split not in self.raw:
                raise ConfigError(f"{self.name}: data.raw has no reader for split {split!r}")
            from hydra.utils import instantiate

            node = dict(self.raw[split])
            if "flip" in node:
                node["flip"] = "none"  # the real reference set: each image once, as it is
            self._raw_cache[split] = instantiate(node)
        return self._raw_cache[split]

    @property
    def train_dataset(self):
        return self.raw_dataset("train")

    @property
    def val_dataset(self):
        return self.raw_dataset("val")


class RawUnavailable(torch.utils.data.Dataset):
    """A split's real images when ``data.raw_root`` is unset: its size is known from the shard
    index, but reading an item or the labels stops with one line saying what evaluation needs."""

    def __init__(self, dm: ShardDataModule, stage: str):
        self.dm, self.stage = dm, stage

    def fail(self):
        raise ConfigError(f"{self.dm.name}: evaluation reads real {self.dm.splits[self.stage]} images from data.raw_root, "
                          f"which this run's config leaves unset: pass data.raw_root=<raw data> to eval.py, "
                          f"or give eval.reference_stats and eval.reference_rows=false")

    def __len__(self) -> int:
        index = self.dm.index.get(self.stage) or read_index(self.dm.split_dir(self.stage))
        if index is None:
            self.fail()
        return int(index.get("num_samples", 0))

    @property
    def labels(self):
        self.fail()

    def __getitem__(self, i):
        self.fail()
