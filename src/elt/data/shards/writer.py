"""Writing one rank's shards of a split, and the index once every rank is done (layout in ``format``)."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from elt.data.shards.format import PROGRESS, plan_rank, safe_key
from elt.runtime.files import write_text_atomic


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

    def tmp_path(self, name: str) -> Path:
        return self.dir / f".{name}.tmp"

    def discard_partial(self) -> None:
        """Remove this rank's shards cut off mid-write: they are redone."""
        for stale in self.dir.glob(f".shard-r{self.rank}-*.tar.tmp"):
            stale.unlink()

    def open(self, name: str) -> None:
        import webdataset as wds

        self.current, self.count, self.skipped = name, 0, 0
        self.tar = wds.TarWriter(str(self.tmp_path(name)), encoder=False, mtime=0)  # same items, same bytes

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
        final = self.dir / name
        os.replace(self.tmp_path(name), final)
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
