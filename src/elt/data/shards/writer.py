"""Writing one rank's shards of a split, and the index once every shard is finished (layout in
``format``). Every file is written to a temporary name and renamed into place when whole; a shard
counts as finished only once its sidecar is in place, so a kill or a full disk at any point loses
at most the shard being written, which the rerun redoes byte for byte."""
from __future__ import annotations

import io
import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from elt.data.shards.format import (FLIP_PREFIX, INDEX, owned, plan_shards, read_sidecar, safe_key, settings_hash,
                                    sidecar_path)
from elt.runtime.files import file_fingerprint, write_text_atomic

FAULT_ENV = "ELT_PREPARE_FAULT"
STAGES = ("mid_shard", "between_shards", "after_last_shard", "merge")


class FaultInjected(BaseException):
    """The in-process stand-in for a kill (``ELT_PREPARE_FAULT=<stage>:raise``): nothing catches it."""


def fault_point(stage: str, rank: int = 0) -> None:
    """Fault injection for tests: ``ELT_PREPARE_FAULT=<stage>[@<rank>][:<how>]`` kills this process
    with SIGKILL when it reaches ``stage`` (one of STAGES); ``how``: ``raise`` raises FaultInjected,
    a signal name (SIGTERM, SIGUSR1) sends that signal instead, as a scheduler would."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    spec, _, how = spec.partition(":")
    name, _, only = spec.partition("@")
    if name != stage or (only and int(only) != rank):
        return
    if how == "raise":
        raise FaultInjected(f"{FAULT_ENV}: {stage} on rank {rank}")
    os.kill(os.getpid(), getattr(signal, how) if how else signal.SIGKILL)


@contextmanager
def naming(path: Path):
    """An OSError from writing ``path`` (a full disk's ENOSPC has no file name) carries its name."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise type(e)(e.errno, e.strerror or str(e), str(path)) from e


class ShardWriter:
    """One rank's shards of one split (shard n to rank n % world), written in plan order. A shard
    goes to ``.<name>.tmp``, is renamed into place when its last planned item has been seen, and
    then gets its sidecar; a rerun keeps every shard whose sidecar matches this run's settings."""

    def __init__(self, split_dir: Path, rank: int, world: int, plan: list[tuple[str, list[int]]], fmt: dict,
                 settings: dict):
        self.dir, self.rank, self.fmt, self.settings = Path(split_dir), rank, fmt, settings
        self.want = settings_hash(settings)
        self.mine = owned(plan, world, rank)
        self.pending = [(name, items) for name, items in self.mine if not self.finished(name)]
        self.shard_of = {i: name for name, items in self.pending for i in items}
        self.last_of = {items[-1]: name for name, items in self.pending}
        self.current, self.tar, self.count = None, None, 0
        self.notes = {"skipped": 0, "padded": 0}
        self.closed = 0  # shards finished by this run

    def finished(self, name: str) -> bool:
        side, path = read_sidecar(self.dir, name), self.dir / name
        return (side is not None and side.get("settings_hash") == self.want and path.is_file()
                and path.stat().st_size == side.get("bytes"))

    def my_items(self) -> list[int]:
        return [i for _, items in self.mine for i in items]

    def done_items(self) -> set[int]:
        return set(self.my_items()) - set(self.shard_of)

    def tmp_path(self, name: str) -> Path:
        return self.dir / f".{name}.tmp"

    def discard_partial(self) -> None:
        """Remove what a kill left of this rank's unfinished shards: they are redone."""
        for name, _ in self.pending:
            self.tmp_path(name).unlink(missing_ok=True)
            for stale in self.dir.glob(f".{name[:-4]}.*.tmp.json"):
                stale.unlink(missing_ok=True)

    def open_for(self, index: int) -> None:
        name = self.shard_of[index]
        if self.current == name:
            return
        import webdataset as wds

        self.abort()
        self.current, self.count, self.notes = name, 0, {"skipped": 0, "padded": 0}
        with naming(self.tmp_path(name)):
            self.tar = wds.TarWriter(str(self.tmp_path(name)), encoder=False, mtime=0)  # same items, same bytes

    def add(self, index: int, key: str, values: dict[str, np.ndarray], label: int, padded: bool = False) -> None:
        """``values``: ``{"": the encoding, "flip": the mirror's}`` (the latter with flip=random)."""
        self.open_for(index)
        sample = {"__key__": safe_key(key), "cls": str(int(label)).encode()}
        for which, value in values.items():
            buf = io.BytesIO()
            np.save(buf, np.asarray(value).astype(self.fmt["dtype"]), allow_pickle=False)
            sample[(FLIP_PREFIX if which else "") + self.fmt["field"]] = buf.getvalue()
        with naming(self.tmp_path(self.current)):
            self.tar.write(sample)
        self.count += 1
        self.notes["padded"] += bool(padded)
        if self.count == 1 and len(dict(self.pending)[self.current]) > 1:
            fault_point("mid_shard", self.rank)

    def seen(self, index: int, skipped: bool = False) -> bool:
        """Item ``index`` was written (or skipped as unreadable); closes its shard if it was the last.
        True when a shard was finished (a boundary where prepare may stop)."""
        if index not in self.shard_of:  # an item of a shard finished by an earlier run
            return False
        if skipped:
            self.open_for(index)
            self.notes["skipped"] += 1
        if index in self.last_of:
            self.close(self.last_of[index])
            return True
        return False

    def abort(self) -> None:
        """An interrupted run: the open shard stays a temporary file, which the rerun redoes."""
        if self.tar is not None:
            tar, self.tar = self.tar, None
            tar.close()

    def close(self, name: str) -> None:
        if self.current != name:
            self.open_for(next(i for n, items in self.pending if n == name for i in items))
        tmp, final = self.tmp_path(name), self.dir / name
        with naming(tmp):
            self.tar.close()
            self.tar = None
            os.replace(tmp, final)
        entry = {"name": name, "samples": self.count, **self.notes, "bytes": final.stat().st_size,
                 "sha256": file_fingerprint(final), "fingerprint": self.settings["fingerprint"],
                 "settings_hash": self.want}
        with naming(sidecar_path(self.dir, name)):
            write_text_atomic(sidecar_path(self.dir, name), json.dumps(entry, indent=1))
        self.pending = [(n, items) for n, items in self.pending if n != name]
        self.current, self.closed = None, self.closed + 1
        fault_point("between_shards" if self.pending else "after_last_shard", self.rank)


def merge_index(split_dir: Path, settings: dict, report: dict | None = None) -> dict:
    """The index from every planned shard's sidecar (rank 0, once all ranks are done). ``complete``
    only when every shard is finished under these settings."""
    split_dir, want = Path(split_dir), settings_hash(settings)
    shards, totals = [], {"skipped": 0, "padded": 0}
    for name, _ in plan_shards(settings["num_items"], settings["shard_size"]):
        side = read_sidecar(split_dir, name)
        path = split_dir / name
        if side is None or side.get("settings_hash") != want or not path.is_file() or path.stat().st_size != side["bytes"]:
            continue
        shards.append({"name": name, "samples": side["samples"], "bytes": side["bytes"], "sha256": side["sha256"]})
        for k in totals:
            totals[k] += side.get(k, 0)
    expected = len(plan_shards(settings["num_items"], settings["shard_size"]))
    fault_point("merge", 0)
    return {"settings": settings, "complete": len(shards) == expected, "num_samples": sum(s["samples"] for s in shards),
            **totals, **(report or {}), "shards": shards}


def write_index(split_dir: Path, index: dict) -> None:
    with naming(Path(split_dir) / INDEX):
        write_text_atomic(Path(split_dir) / INDEX, json.dumps(index, indent=1))
