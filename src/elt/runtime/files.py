"""Files of the evaluation: written whole or not at all, and keyed by content hashes.

A crash (or Ctrl-C in a 50k-sample sweep) leaves the previous version of a file, never a truncated
one that a rerun would trust; caches are keyed by hashes of what they depend on, so a change of
weights, data split or settings can never reuse a stale entry."""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yields a temporary sibling (same suffix, so writers infer the format) that replaces
    ``path`` only when the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fingerprint(obj) -> str:
    """Short stable hash of a JSON-able description (settings, recipe, split)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_fingerprint(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def require_local_file(path: str | Path | None, what: str, how_to_get: str) -> Path:
    """Weights and data that usually come from a hub are read from a local path only.

    Fails at once with one line naming the missing file and how to get it: never a download
    attempt that hangs, never a silent fallback.
    """
    if path is None or str(path).strip() in ("", "None", "null"):
        raise FileNotFoundError(f"{what}: no path configured; {how_to_get}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what}: file not found: {p}; {how_to_get}")
    return p
