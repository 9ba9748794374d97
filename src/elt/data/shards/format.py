"""What a split's shards hold and how its index describes them.

Layout: ``<root>/<split>/shard-{n:05d}.tar`` holds items ``[n·S, (n+1)·S)`` of the raw split (S =
``prepare.shard_size``), whichever rank wrote it, so a shard's bytes depend only on its items, the
encoder and the preprocessing, never on the number of ranks or workers. Per sample: ``<key>.<field>``
(``tokens.npy`` int16/int32, ``latent.npy`` float16, or ``moments.npy``: an AutoencoderKL posterior's
mean and log-variance stacked, float16 ``[2, *latent_shape]``), ``<key>.flip.<field>`` (with
``flip=random``: the mirror image's encoding) and ``<key>.cls``.

Each finished shard has a sidecar ``shard-{n:05d}.json`` written after the tar is renamed into place:
samples, bytes, sha256, the encoder fingerprint and the settings' hash. A shard counts as finished
only when its sidecar agrees with the tar's size and with this run's settings, so a kill at any point
leaves at most one tar per rank to redo, and a lost or rewritten ``index.json`` cannot mix two
encoders' shards. ``index.json`` is merged from the sidecars once every shard is finished.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from elt.runtime.config import ConfigError
from elt.runtime.files import file_fingerprint, fingerprint

log = logging.getLogger(__name__)

FORMAT = 2
INDEX = "index.json"
FIELDS = {"tokens": "tokens.npy", "latent": "latent.npy", "moments": "moments.npy"}
FLIP_PREFIX = "flip."
POSTERIORS = ("distribution", "sample")


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


def has_posterior(encoder) -> bool:
    """An autoencoder whose ``posterior(images)`` gives the scaled mean and log-variance."""
    return encoder_kind(encoder) == "latent" and callable(getattr(encoder, "posterior", None))


def stored_format(encoder, posterior: str = "distribution", flips: bool = False) -> dict:
    """Field, dtype and shapes of what the shards store per sample: ``shape`` is the value the model
    consumes, ``stored_shape`` the array in the file (``[2, *shape]`` for posterior moments)."""
    kind = encoder_kind(encoder)
    if kind == "tokens":
        dtype = "int16" if encoder.vocab_size <= np.iinfo(np.int16).max + 1 else "int32"
        shape = [int(encoder.num_tokens)]
        out = {"kind": kind, "field": FIELDS[kind], "dtype": dtype, "shape": shape, "vocab_size": int(encoder.vocab_size)}
    else:
        shape = [int(s) for s in encoder.latent_shape]
        out = {"kind": kind, "field": FIELDS[kind], "dtype": "float16", "shape": shape}
        if has_posterior(encoder):
            if posterior not in POSTERIORS:
                raise ConfigError(f"prepare.posterior must be one of {POSTERIORS}, got {posterior!r}")
            out["posterior"] = posterior
            if posterior == "distribution":
                out.update(field=FIELDS["moments"], stored_shape=[2, *shape])
    out["flips"] = bool(flips)
    return out


def stored_shape(fmt: dict) -> list[int]:
    return list(fmt.get("stored_shape", fmt["shape"]))


def preprocessing(reader_cfg: dict, reader) -> dict:
    """What makes two encodings of a split comparable: the reader and its settings (not where the
    raw files live or whether unreadable ones are skipped)."""
    name = type(reader).__name__
    out = {"reader": name, "crop": getattr(reader, "crop", name)}
    out.update({k: v for k, v in reader_cfg.items() if k not in ("_target_", "raw_root", "root", "skip_bad")})
    return out


def shard_name(n: int) -> str:
    return f"shard-{n:05d}.tar"


def sidecar_path(split_dir: Path, name: str) -> Path:
    return Path(split_dir) / (name[:-len(".tar")] + ".json")


def safe_key(key: str) -> str:
    """webdataset splits a member name at the first dot of its basename: keys keep none."""
    return key.replace(".", "_")


def plan_shards(num_items: int, shard_size: int) -> list[tuple[str, list[int]]]:
    """Every shard of a split: shard n holds items [n·S, (n+1)·S), whatever the number of ranks."""
    return [(shard_name(n), list(range(s, min(s + shard_size, num_items))))
            for n, s in enumerate(range(0, num_items, shard_size))]


def owned(plan: list, world: int, rank: int) -> list:
    """Rank ``rank``'s shards of a plan: shard n goes to rank n % world."""
    return plan[rank::world]


def settings_hash(settings: dict) -> str:
    """What a sidecar must match to be reused: everything that decides a shard's bytes."""
    keep = {k: v for k, v in settings.items() if k not in ("world_size", "classes", "num_items")}
    return fingerprint(keep)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to rewrite it") from None


def read_index(split_dir: Path) -> dict | None:
    return read_json(Path(split_dir) / INDEX)


def read_sidecar(split_dir: Path, name: str) -> dict | None:
    """A shard's sidecar, or None where it is missing or cut off (the shard is then redone)."""
    try:
        return read_json(sidecar_path(split_dir, name))
    except ValueError:
        return None


def check_compatible(split_dir: Path, existing: dict | None, settings: dict) -> None:
    """Refuse, in one line, to add to a split written with another encoder or other preprocessing
    (or, while it is unfinished, another shard plan). The number of ranks may change: the plan does
    not depend on it."""
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
    for key, what in (("format", "shard format"), ("num_items", "number of raw items"),
                      ("shard_size", "prepare.shard_size"), ("posterior", "prepare.posterior"), ("seed", "prepare.seed")):
        if old.get(key) != settings.get(key) and not (existing.get("complete") and key == "shard_size"):
            raise ConfigError(f"{where}: its {what} was {old.get(key)}, this run's is {settings.get(key)}; resume with "
                              f"the same, or use another data.root")


def check_sidecars(split_dir: Path, settings: dict) -> None:
    """Finished shards of another encoder or other settings stop the run in one line, even when
    ``index.json`` is gone: they would otherwise be kept beside this run's."""
    want = settings_hash(settings)
    for path in sorted(Path(split_dir).glob("shard-*.json")):
        side = read_sidecar(split_dir, path.stem + ".tar")
        if side is None or side.get("settings_hash") == want:
            continue
        what = (f"was encoded by fingerprint {side.get('fingerprint')}, this run's is {settings['fingerprint']}"
                if side.get("fingerprint") != settings["fingerprint"] else "was written with other settings")
        raise ConfigError(f"refusing to add to {split_dir}: {path.stem}.tar {what} (its sidecar {path.name}); "
                          f"use another data.root or delete the directory")


def verify_index(split_dir: Path, index: dict, skip_bad: bool = False) -> None:
    """The index agrees with its shards: each file there with its recorded size and a sidecar of the
    index's fingerprint, and the counts add up. Cheap (a stat and a small read per shard). With
    ``skip_bad`` a shard of another size is only logged: the stream counts its bad samples."""
    split_dir, fp = Path(split_dir), index["settings"]["fingerprint"]
    where = f"{split_dir / INDEX} disagrees with its shards"
    fix = "rerun prepare.py with the same settings, or restore the directory from a whole copy"
    if sum(s["samples"] for s in index["shards"]) != index.get("num_samples"):
        raise ValueError(f"{where}: its shards hold {sum(s['samples'] for s in index['shards'])} samples, it says "
                         f"num_samples={index.get('num_samples')}; {fix}")
    for s in index["shards"]:
        path = split_dir / s["name"]
        if not path.is_file():
            raise ValueError(f"{where}: {path} is missing; {fix}")
        size = path.stat().st_size
        if size != s["bytes"]:
            message = f"{where}: {path} is {size} bytes, the index says {s['bytes']}"
            if not skip_bad:
                raise ValueError(f"{message}; {fix} (or set data.skip_bad=true to skip its bad samples)")
            log.warning("%s; its bad samples are skipped and counted (data.skip_bad=true)", message)
        side = read_sidecar(split_dir, s["name"])
        if index["settings"].get("format", 1) >= 2 and (side is None or side.get("fingerprint") != fp
                                                          or side.get("sha256") != s.get("sha256")):
            got = "no sidecar" if side is None else f"sidecar fingerprint {side.get('fingerprint')}"
            raise ValueError(f"{where}: {path} has {got}, the index says fingerprint {fp}; {fix}")


class ShardError(ValueError):
    """A damaged shard or sample: names the shard and the key."""

    def __init__(self, url: str, key: str | None, reason: str, lost: int = 1, hint: bool = True):
        where = f"sample {key}: " if key else "" if key == "" else "its first sample: "
        more = " (set data.skip_bad=true to skip bad samples)" if hint else ""
        super().__init__(f"corrupt shard {url}: {where}{reason}{more}")
        self.url, self.key, self.reason, self.lost = url, key, reason, lost
