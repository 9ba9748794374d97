"""What a split's shards hold and how its index describes them.

Layout: ``<root>/<split>/shard-r{rank}-{n:05d}.tar`` (per sample ``<key>.tokens.npy`` int16/int32 or
``<key>.latent.npy`` float16, and ``<key>.cls``) plus ``<root>/<split>/index.json``: samples per
shard, shape, dtype, preprocessing and the tokenizer / autoencoder fingerprint. Shards are written
to a temporary name and renamed into place when whole, and each rank records its finished shards
in ``_progress/rank{r}.json``, so an interrupted prepare keeps them and redoes only the partial one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from elt.runtime.config import ConfigError
from elt.runtime.files import file_fingerprint, fingerprint

FORMAT = 1
INDEX = "index.json"
PROGRESS = "_progress"
FIELDS = {"tokens": "tokens.npy", "latent": "latent.npy"}


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
    out = {"reader": name, "crop": getattr(reader, "crop", name)}
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


class ShardError(ValueError):
    """A damaged shard or sample: names the shard and the key."""

    def __init__(self, url: str, key: str | None, reason: str, lost: int = 1):
        where = f"sample {key}" if key else "its first sample"
        super().__init__(f"corrupt shard {url}: {where}: {reason} (set data.skip_bad=true to skip bad samples)")
        self.url, self.key, self.lost = url, key, lost
