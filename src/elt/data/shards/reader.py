"""Reading shards: the training stream and validation passes that ``ShardDataModule`` loads.

Epoch ``e`` is a permutation of the training shards drawn from ``(seed, e)``; rank ``r`` of ``R``
reads every R-th shard of it and DataLoader worker ``w`` of ``W`` every W-th of those, through a
shuffle buffer seeded by ``(seed, e, r, w)``; each rank yields a fixed number of batches per epoch
(the split's samples / R / batch, a multiple of W), continuing into the next permutation if its
shards run short. With equal shards the ranks and workers see disjoint samples that together cover
the epoch. The stream is a pure function of (seed, epoch, rank, worker), so resume is exact when
the number of ranks and workers is unchanged: a run resumed mid-epoch skips the batches already
trained on (read, not decoded). With other counts the resumed run sees a fresh but still
deterministic stream of the same epoch.
"""
from __future__ import annotations

import io
import logging
import math
import os
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from elt.data.shards.format import ShardError

log = logging.getLogger(__name__)


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
    """The shuffle buffer's seed, mixed by numpy's SeedSequence like the shard permutation's
    ``default_rng([seed, epoch, k])``. Not ``elt.runtime.resume.mix_seed``: that is another
    function, and the order in which written shards are read depends on this one's values."""
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
