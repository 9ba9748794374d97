"""The datamodule train.py and eval.py build for a sharded dataset: shards for training and
validation, the raw reader for evaluation's real images."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from elt.data.sampler import ResumablePosition
from elt.data.shards.format import FORMAT, INDEX, encoder_fingerprint, read_index, stored_format, verify_index
from elt.data.shards.reader import EpochLoader, ShardStream, epoch_batches
from elt.runtime.config import ConfigError
from elt.runtime.resume import mix_seed

log = logging.getLogger(__name__)


def prepare_hint(name: str, root: Path) -> str:
    return (f"write them once with: python prepare.py data={name} model=<maskgit_elt|dit_elt> data.raw_root=<raw data> "
            f"data.root={root}")


class ShardDataModule(ResumablePosition, L.LightningDataModule):
    """Training and validation from the shards prepare.py wrote (the stream of ``reader``); real
    images for evaluation (``train_dataset`` / ``val_dataset``) from the raw reader of ``raw`` when
    ``raw_root`` is set, decoded only as items are read.

    Per-step augmentation of stored encodings happens in ``on_after_batch_transfer`` with a generator
    seeded by (run seed, rank, batch counter), so a resumed run draws what the uninterrupted one
    would: with ``data.flip=random`` (shards holding both encodings) each sample's original or mirror;
    with a stored AutoencoderKL posterior a fresh latent, or its mean where the model's autoencoder
    has ``sample=false``. Validation reads originals and means.

    Loader options (``loader_options``): ``pin_memory`` auto = on when the trainer's device is CUDA
    (page-locked batches copy to the GPU asynchronously); ``persistent_workers`` auto = on with
    workers (no worker start-up at each epoch and validation pass; the epoch and the batches to
    skip reach kept workers through the stream's shared position, see ``EpochLoader``);
    ``prefetch_factor`` batches queued per worker (PyTorch's 2)."""

    def __init__(self, root: str, batch_size: int, name: str, num_classes: int, image_shape, num_workers: int = 0,
                 raw: dict | None = None, raw_root: str | None = None, shuffle_buffer: int = 1000,
                 skip_bad: bool = False, max_bad_fraction: float = 0.001, train_split: str = "train",
                 val_split: str = "val", pin_memory="auto", persistent_workers="auto", prefetch_factor: int = 2):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if not 0 <= float(max_bad_fraction) < 1:
            raise ValueError(f"data.max_bad_fraction must be in [0, 1), got {max_bad_fraction}")
        for key, value in (("pin_memory", pin_memory), ("persistent_workers", persistent_workers)):
            if not (isinstance(value, bool) or value == "auto"):
                raise ConfigError(f"data.{key} must be auto, true or false, got {value!r}")
        if isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int) or prefetch_factor < 1:
            raise ConfigError(f"data.prefetch_factor must be an integer >= 1 (batches queued per loader worker), "
                              f"got {prefetch_factor!r}")
        if persistent_workers is True and int(num_workers) == 0:
            raise ConfigError("data.persistent_workers=true needs loader workers to keep: set data.num_workers > 0 "
                              "(or data.persistent_workers=auto)")
        self.pin_memory, self.persistent_workers, self.prefetch_factor = pin_memory, persistent_workers, prefetch_factor
        self.root, self.batch_size, self.num_workers = Path(root), int(batch_size), int(num_workers)
        self.name, self.num_classes, self.image_shape = name, int(num_classes), tuple(int(s) for s in image_shape)
        self.raw, self.raw_root = dict(raw or {}), raw_root
        self.shuffle_buffer, self.skip_bad, self.max_bad_fraction = int(shuffle_buffer), bool(skip_bad), float(max_bad_fraction)
        self.splits = {"train": train_split, "val": val_split}
        self.flip = str((self.raw.get(train_split) or {}).get("flip", "none"))  # data.flip, through data.raw
        self.posterior_sample = True  # the model's autoencoder.sample, read in check_model
        self.index: dict[str, dict | None] = {}
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
        if index["settings"].get("format") != FORMAT:
            raise ConfigError(f"{self.name}: {d} was written by another prepare.py (shard format "
                              f"{index['settings'].get('format')}, this one reads {FORMAT}); {prepare_hint(self.name, self.root)} "
                              f"into a new data.root")
        verify_index(d, index, self.skip_bad)
        if stage == "train" and self.flip == "random" and not index["settings"].get("flips"):
            raise ConfigError(f"data.flip=random needs shards that hold each image's mirror too, and {d} holds none; "
                              f"prepare them with data.flip=random into a new data.root")
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
        self.posterior_sample = bool(getattr(encoder, "sample", True))

    def batches_per_epoch(self, index: dict, world: int) -> int:
        """Every worker of every rank the same number of full batches of disjoint samples (the
        reader deals whole shards, then splits the rest by sample)."""
        workers = max(1, self.num_workers)
        per_rank = epoch_batches(index["shards"], world, workers, self.batch_size)
        if per_rank < 1:
            raise ConfigError(f"data.batch_size ({self.batch_size}) x {world} rank(s) x {workers} worker(s) is more than "
                              f"the {index['num_samples']} training samples in {self.split_dir('train')}: no full "
                              f"batch per worker to train on")
        return per_rank

    def loader_options(self, workers: int, stage: str) -> dict:
        """A DataLoader's keyword arguments with ``workers`` workers, the auto settings resolved. Its own
        generator (for the workers' base seed, which the stream does not use) leaves the global RNGs
        as they were, persistent workers or not, so a resumed run's dropout draws are the uninterrupted
        run's."""
        trainer = self.trainer
        cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
        keep = workers > 0 and self.persistent_workers in ("auto", True)
        _, rank = self.ranks()
        return {"num_workers": workers, "pin_memory": cuda if self.pin_memory == "auto" else self.pin_memory,
                "persistent_workers": keep, "prefetch_factor": self.prefetch_factor if workers > 0 else None,
                "generator": torch.Generator().manual_seed(mix_seed(self.shuffle_seed, rank, stage, "loader"))}

    def train_dataloader(self):
        world, rank = self.ranks()
        index = self.index.get("train") or self.load_index("train", True)
        stream = ShardStream(self.split_dir("train"), index, self.batch_size, rank, world, train=True,
                             seed=self.shuffle_seed, batches=self.batches_per_epoch(index, world),
                             shuffle_buffer=self.shuffle_buffer, skip_bad=self.skip_bad,
                             max_bad_fraction=self.max_bad_fraction)
        epoch_fn = (lambda: self.trainer.current_epoch) if self.trainer is not None else (lambda: stream.epoch)
        return EpochLoader(stream, epoch_fn, self._resume, **self.loader_options(self.num_workers, "train"))

    def val_dataloader(self):
        index = self.index.get("val")
        if index is None:
            log.info("%s: no validation shards in %s: validation skipped", self.name, self.split_dir("val"))
            return []
        world, rank = self.ranks()
        workers = min(self.num_workers, len(index["shards"]))
        stream = ShardStream(self.split_dir("val"), index, self.batch_size, rank, world, train=False,
                             skip_bad=self.skip_bad, max_bad_fraction=self.max_bad_fraction, workers=workers)
        return DataLoader(stream, batch_size=None, **self.loader_options(workers, "val"))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Errors from the loader workers as one line; skipped samples counted and logged."""
        if "error" in batch:
            raise ValueError(batch["error"])
        skipped = int(batch.pop("skipped", 0))
        if skipped:
            self.skipped += skipped
            log.warning("%s: %d bad sample(s) skipped so far (data.skip_bad=true)", self.name, self.skipped)
        return self.augment(batch)

    def augment(self, batch: dict) -> dict:
        """Stored encodings -> the model's ``tokens`` / ``latent`` (see the class docstring)."""
        name = "moments" if "moments" in batch else next((k for k in ("tokens", "latent") if k in batch), None)
        if name is None:
            return batch
        x, mirror = batch.pop(name), batch.pop(name + "_flip", None)
        trainer = self.trainer
        training = trainer is None or bool(trainer.training)
        flip = training and mirror is not None and self.flip == "random"
        sample = training and name == "moments" and self.posterior_sample
        gen = None
        if flip or sample:
            world, rank = self.ranks()
            counter = trainer.fit_loop.epoch_loop.batch_progress.total.ready if trainer is not None else 0
            gen = torch.Generator(device=x.device).manual_seed(mix_seed(self.shuffle_seed, rank, counter, "data"))
        if flip:
            pick = torch.rand(len(x), generator=gen, device=x.device) < 0.5
            x = torch.where(pick.view(-1, *[1] * (x.ndim - 1)), mirror, x)
        if name == "moments":
            mean, logvar = x[:, 0], x[:, 1]
            x = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen, device=x.device) if sample else mean
            name = "latent"
        batch[name] = x
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
