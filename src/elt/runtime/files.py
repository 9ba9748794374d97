"""Files: written whole or not at all, keyed by content hashes, and I/O failures as one line.

A crash, a full disk (or Ctrl-C in a 50k-sample sweep) leaves the previous version of a file, never a
truncated one that a rerun would trust; caches are keyed by hashes of what they depend on, so a change of
weights, data split or settings can never reuse a stale entry."""
from __future__ import annotations

import errno
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

# what the user can do about an I/O error, by errno (the rest: the system's own words)
FULL = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded"}


def naming(e: OSError, path, tmp=None) -> OSError:
    """``e`` naming ``path`` when it names no file (a failed ``write``) or ``tmp``, the temporary
    sibling that was being written: the one line then says which file could not be written."""
    if e.filename is not None and (tmp is None or str(e.filename) != str(tmp)):
        return e
    return type(e)(e.errno, e.strerror or str(e), str(path))


def io_error_line(e: OSError) -> str | None:
    """The one line for an I/O failure of the machine (disk full, quota, read-only, permissions,
    a failing disk), or None when ``e`` names neither a file nor such a cause (a bug keeps its
    traceback). Every writer of the project replaces a file only by a complete new one, so a full
    disk loses nothing that was finished."""
    name = e.filename
    if e.errno in FULL:
        if name is None:
            return f"{FULL[e.errno]} on the device; nothing finished was lost"
        path = Path(os.path.abspath(str(name)))
        return f"{FULL[e.errno]} on {path.parent} while writing {path.name}; nothing finished was lost"
    if name is None:
        return f"I/O error ({e.strerror}); nothing finished was lost" if e.errno == errno.EIO else None
    if e.errno == errno.EROFS:
        return f"read-only file system: cannot write {name}"
    if e.errno == errno.EIO:
        return f"I/O error on {name} (a failing disk or network file system); nothing finished was lost"
    return f"{(e.strerror or type(e).__name__).lower()}: {name}"


@contextmanager
def atomic_path(path):
    """Yields a temporary sibling (same suffix, so writers infer the format) that replaces
    ``path`` only when the block finishes. An I/O error names ``path``, not the sibling."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        named = naming(e, path, tmp)
        if named is e:
            raise
        raise named from e
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
