"""Reading shards: the training stream and validation passes that ``ShardDataModule`` loads.

Epoch ``e`` is a permutation of the training shards drawn from ``(seed, e)``, dealt to the R×W reader
slots (rank r's DataLoader worker w is slot r·W + w): full shards in whole rounds, one per slot, and
what remains (the leftover full shards and every short one) split by sample into R×W contiguous,
near-equal ranges. The slots thus read disjoint samples that cover the epoch, whatever the number of
shards; each reads them through a shuffle buffer seeded by ``(seed, e, r, w)`` and yields the same
number of batches (``epoch_batches``), dropping fewer than a batch plus one of its samples. A slot
that runs short (bad samples skipped) continues into the permutation drawn from ``(seed, e, k)``.
The stream is a pure function of (seed, epoch, rank, worker), so resume is exact when the number of
ranks and workers is unchanged: a run resumed mid-epoch skips the batches already trained on (read,
not decoded). With other counts the resumed run sees a fresh but still deterministic stream.

Every shard read whole is checked against the index: its number of samples and its checksum; a
short or altered shard raises ShardError naming it. Under ``data.skip_bad`` the error is logged and
counted instead; a checksum or surplus found at the end of a shard is known only after its samples
were streamed, so those samples have been trained on and the shard counts once.
"""
from __future__ import annotations

import hashlib
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

from elt.data.shards.format import FLIP_PREFIX, ShardError, stored_shape

log = logging.getLogger(__name__)


class HashingReader(io.RawIOBase):
    """A file read once, hashed on the way (the shard's checksum costs no second read)."""

    def __init__(self, f):
        self.f, self.hash = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        if n:
            self.hash.update(memoryview(b)[:n])
        return n

    def drain(self) -> str:
        while block := self.f.read(1 << 20):
            self.hash.update(block)
        return self.hash.hexdigest()[:16]  # as elt.runtime.files.file_fingerprint


def read_shard(url: str, digest: dict | None = None, hint: bool = True) -> Iterator[dict]:
    """The samples of one tar file in order, as ``{"__key__", "__url__", <ext>: bytes}``; a tar that
    cannot be read raises ShardError naming the key being read (or the last whole one). With
    ``digest`` (a dict), the file's checksum is put in ``digest["sha256"]`` once it is read whole."""
    sample, key, last_whole = None, None, None
    try:
        with open(url, "rb", buffering=0) as raw:
            hashing = HashingReader(raw) if digest is not None else None
            with tarfile.open(fileobj=io.BufferedReader(hashing or raw, 1 << 20), mode="r|") as tar:
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
            if hashing:
                digest["sha256"] = hashing.drain()
    except (tarfile.TarError, EOFError, OSError) as e:
        near = key if key is not None else last_whole
        raise ShardError(url, near, f"unreadable tar ({type(e).__name__}: {e})", hint=hint) from None
    if sample is not None:
        yield sample


def decode_sample(sample: dict, fmt: dict, hint: bool = True) -> tuple[dict[str, np.ndarray], int, str]:
    """``({"": value, "flip": mirror's value (where stored)}, label, key)``."""
    url, key = sample["__url__"], sample["__key__"]
    fields = {"": fmt["field"], **({"flip": FLIP_PREFIX + fmt["field"]} if fmt.get("flips") else {})}
    want = stored_shape(fmt)
    values = {}
    try:
        for which, field in fields.items():
            values[which] = np.load(io.BytesIO(sample[field]), allow_pickle=False)
        label = int(sample["cls"].decode())
    except KeyError as e:
        raise ShardError(url, key, f"no {e.args[0]} member", hint=hint) from None
    except Exception as e:
        raise ShardError(url, key, f"cannot decode ({type(e).__name__}: {e})", hint=hint) from None
    for which, value in values.items():
        if list(value.shape) != want or str(value.dtype) != fmt["dtype"]:
            raise ShardError(url, key, f"{fields[which]} is {value.dtype}{list(value.shape)}, the index says "
                                       f"{fmt['dtype']}{want}", hint=hint)
    return values, label, key


def batch_field(fmt: dict) -> str:
    """The batch entry a shard's values travel under until ``ShardDataModule`` resolves them: the
    model's ``tokens`` / ``latent``, or ``moments`` for a stored posterior."""
    return "moments" if fmt.get("stored_shape") else fmt["kind"]


def collate(values: list[dict], labels: list[int], keys: list[str], fmt: dict) -> dict:
    name, out = batch_field(fmt), {}
    for which in values[0]:
        x = torch.from_numpy(np.stack([v[which] for v in values]))
        out[name + ("_" + which if which else "")] = x.long() if fmt["kind"] == "tokens" else x.float()
    return {**out, "label": torch.tensor(labels, dtype=torch.long), "key": keys}


def stream_seed(*parts: int) -> int:
    """The shuffle buffer's seed, mixed by numpy's SeedSequence like the shard permutation's
    ``default_rng([seed, epoch, k])``. Not ``elt.runtime.resume.mix_seed``: that is another
    function, and the order in which written shards are read depends on this one's values."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def deal(shards: list[dict], slot: int, slots: int) -> list[tuple[dict, int, int]]:
    """Slot ``slot``'s part of ``shards`` (in their order): ``(shard, first, stop)`` sample ranges.
    Full shards go whole, one per slot per round; the rest is split into contiguous ranges."""
    full = max((s["samples"] for s in shards), default=0)
    whole = [s for s in shards if s["samples"] == full]
    rounds = len(whole) // slots
    pool = whole[rounds * slots:] + [s for s in shards if s["samples"] < full]
    mine = [(s, 0, s["samples"]) for s in whole[:rounds * slots][slot::slots]]
    total = sum(s["samples"] for s in pool)
    lo, hi, at = slot * total // slots, (slot + 1) * total // slots, 0
    for s in pool:
        a, b = max(lo - at, 0), min(hi - at, s["samples"])
        if a < b:
            mine.append((s, a, b))
        at += s["samples"]
    return mine


def slot_samples(shards: list[dict], slots: int) -> int:
    """The fewest samples ``deal`` gives any slot, the same in every epoch."""
    full = max((s["samples"] for s in shards), default=0)
    whole = sum(1 for s in shards if s["samples"] == full)
    rounds = whole // slots
    return rounds * full + (sum(s["samples"] for s in shards) - rounds * slots * full) // slots


def epoch_batches(shards: list[dict], world: int, workers: int, batch_size: int) -> int:
    """Batches per epoch on each rank: every worker of every rank the same number of full batches."""
    return slot_samples([s for s in shards if s["samples"] > 0], world * max(1, workers)) // batch_size * max(1, workers)


class ShardStream(IterableDataset):
    """Collated batches from one split's shards for one rank (see the module docstring).

    ``train=True``: the epoch's dealt samples through a shuffle buffer, ``batches`` batches per epoch
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
        # (epoch, batches to skip) in shared memory: a persistent DataLoader worker keeps the copy of
        # this object it was started with, so what changes per epoch must be read from here
        self.position = torch.zeros(2, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self.position[0])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.position[0] = int(value)

    @property
    def skip(self) -> int:
        return int(self.position[1])

    @skip.setter
    def skip(self, value: int) -> None:
        self.position[1] = int(value)

    def __len__(self) -> int:
        """Batches per epoch on this rank; validation: every worker's batches, its last one partial."""
        if self.train:
            return self.batches
        return sum(math.ceil(sum(b - a for _, a, b in parts) / self.batch_size)
                   for w in range(max(1, self.workers)) for parts in self.passes(w, max(1, self.workers)))

    def worker(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def passes(self, w: int, workers: int, epoch: int = 0) -> Iterator[list[tuple[dict, int, int]]]:
        """This worker's sample ranges: once in order (val), or per pass k = 0, 1, ... its deal of the
        permutation drawn from (seed, epoch, k) (train; pass 0 is the epoch, later passes only
        serve a worker whose samples ran short)."""
        if not self.train:
            mine = self.shards[self.rank::self.world] if len(self.shards) >= self.world else self.shards
            yield [(s, 0, s["samples"]) for s in mine[w::workers]]
            return
        for k in range(10**9):
            order = np.random.default_rng([self.seed, epoch, k]).permutation(len(self.shards))
            yield deal([self.shards[i] for i in order], self.rank * workers + w, self.world * workers)

    def samples(self, parts: list[tuple[dict, int, int]], stats: dict) -> Iterator[dict]:
        """The samples of each range; a shard read whole is counted and checksummed against the index."""
        hint = not self.skip_bad
        for shard, first, stop in parts:
            url, read, whole = str(self.dir / shard["name"]), 0, first == 0 and stop == shard["samples"]
            stats["opened"] += stop - first
            digest = {} if whole and shard.get("sha256") else None
            try:
                for n, sample in enumerate(read_shard(url, digest, hint=hint)):
                    if n >= stop:
                        if not whole:
                            break
                        raise ShardError(url, "", f"holds more samples than the {shard['samples']} the index says",
                                         hint=hint)
                    read = n + 1
                    if n >= first:
                        yield sample
                if read < stop:
                    raise ShardError(url, "", f"holds {read} samples, the index says {shard['samples']}", hint=hint)
                if digest is not None and digest.get("sha256") != shard["sha256"]:
                    raise ShardError(url, "", f"its bytes differ from those written (checksum {digest.get('sha256')}, "
                                              f"the index says {shard['sha256']})", hint=hint)
            except ShardError as e:
                self.bad(e, stats, max(stop - max(read, first), 1))

    def bad(self, e: ShardError, stats: dict, lost: int) -> None:
        if not self.skip_bad:
            raise e
        stats["bad"] += lost
        if stats["bad"] > self.max_bad_fraction * max(stats["opened"], 1):
            raise ValueError(f"{stats['bad']} of {stats['opened']} samples in the shards read so far are unreadable, "
                             f"more than data.max_bad_fraction={self.max_bad_fraction} allows with data.skip_bad=true "
                             f"(last: {e}); re-prepare the damaged shards or raise data.max_bad_fraction")
        log.warning("skipped %d bad sample(s): %s", lost, e)

    def stream(self, w: int, workers: int, stats: dict, epoch: int = 0) -> Iterator[dict]:
        """Undecoded samples; in training each pass goes through its own shuffle buffer, so the
        buffer never mixes an epoch's samples with the next pass's."""
        import random

        import webdataset as wds

        rng = random.Random(stream_seed(self.seed, epoch, self.rank, w))
        for parts in self.passes(w, workers, epoch):
            source = self.samples(parts, stats)
            if self.train:
                source = wds.filters._shuffle(source, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
            yield from source

    def __iter__(self):
        p, workers = self.worker()
        epoch, skip = (int(v) for v in self.position)  # read once: the pass is a function of these
        # The DataLoader takes batches from its workers in turn starting with worker 0, and batch j of
        # the epoch is slot j % workers's: after ``skip`` batches, loader worker p reads slot w below
        w = (p + skip) % workers if self.train else p
        stats = {"opened": 0, "bad": 0}
        try:
            source = self.stream(w, workers, stats, epoch)
            quota = None
            if self.train:
                skip = skip // workers + (w < skip % workers)
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
                value, label, key = decode_sample(sample, self.fmt, hint=not self.skip_bad)
            except ShardError as e:
                self.bad(e, stats, 1)
                continue
            values.append(value), labels.append(label), keys.append(key)
            if len(values) == self.batch_size:
                yield {**collate(values, labels, keys, self.fmt), "skipped": stats["bad"] - reported}
                reported, made = stats["bad"], made + 1
                values, labels, keys = [], [], []
                if quota is not None and made >= quota:
                    return
        if values and quota is None:
            yield {**collate(values, labels, keys, self.fmt), "skipped": stats["bad"] - reported}


class EpochLoader(DataLoader):
    """Tells its ShardStream the epoch (the trainer's, so a resumed run continues its numbering)
    and how many batches of it to skip, before each pass starts or resumes its workers. Both travel
    in the stream's shared ``position``, so persistent workers (``persistent_workers=True``), which
    keep the stream they were started with, read each epoch's values: the order of a pass is the
    same with and without them. ``kw``: the other DataLoader options (workers, pinning, prefetch)."""

    def __init__(self, dataset: ShardStream, epoch_fn, resume: dict, **kw):
        super().__init__(dataset, batch_size=None, **kw)
        self.epoch_fn, self.resume = epoch_fn, resume

    def __iter__(self):
        epoch = int(self.epoch_fn())
        self.dataset.epoch = epoch
        self.dataset.skip = self.resume["batches"] if epoch == self.resume["epoch"] else 0
        return super().__iter__()
