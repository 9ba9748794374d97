"""The embedded dataset: scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes,
17 gray levels). Real data that ships inside the wheel, so the demo and tests need no download.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from elt.runtime.config import ConfigError
from elt.data.sampler import ResumablePosition, ResumableSampler
from elt.data.splits import held_out_mask


class ImageLabelDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": int(self.labels[i])}


def digits_split(val_per_class: int = 30, seed: int = 0):
    """Fixed, class-stratified split: ``val_per_class`` images of each digit held out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # [n,1,8,8] in [0,1]
    labels = torch.from_numpy(d.target.astype(np.int64))
    is_val = held_out_mask(d.target, 10, val_per_class, seed, "digits")
    tr, va = torch.from_numpy(~is_val), torch.from_numpy(is_val)
    return ImageLabelDataset(images[tr], labels[tr]), ImageLabelDataset(images[va], labels[va])


class InMemoryDataModule(ResumablePosition, L.LightningDataModule):
    """Loaders and the batch-size check shared by the embedded datasets, which build both splits
    in memory at ``setup()``; a subclass supplies ``make_splits()``.

    The training order is seeded by ``shuffle_seed`` (train.py sets the run's seed) and split
    across ranks; the position inside the epoch travels in the checkpoint (``state_dict``)."""

    min_val_batch = 300  # validation runs in few, large batches

    def __init__(self, batch_size: int, num_workers: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_dataset = self.val_dataset = None

    def make_splits(self) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None):
        if self.train_dataset is None:
            self.train_dataset, self.val_dataset = self.make_splits()

    def check_batch_size(self, world: int | None = None) -> None:
        """drop_last with fewer items per rank than one batch trains on nothing: refuse up front."""
        self.setup()
        world = world or self.ranks()[0]
        per_rank = len(self.train_dataset) // world
        if per_rank < self.batch_size:
            raise ConfigError(f"data.batch_size ({self.batch_size}) is larger than the training split "
                              f"({len(self.train_dataset)} items{f' over {world} ranks' if world > 1 else ''}): "
                              f"no full batch to train on")

    def train_dataloader(self):
        self.check_batch_size()
        world, rank = self.ranks()
        sampler = ResumableSampler(self.train_dataset, seed=self.shuffle_seed, num_replicas=world, rank=rank,
                                   epoch=self._resume["epoch"], start=self._resume["batches"] * self.batch_size)
        return DataLoader(self.train_dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        return DataLoader(self.val_dataset, batch_size=max(self.batch_size, self.min_val_batch), shuffle=False,
                          num_workers=self.num_workers)


class DigitsDataModule(InMemoryDataModule):
    name = "digits"
    num_classes = 10
    image_shape = (1, 8, 8)

    def __init__(self, batch_size: int = 128, val_per_class: int = 30, split_seed: int = 0, num_workers: int = 0):
        super().__init__(batch_size, num_workers)
        self.val_per_class, self.split_seed = val_per_class, split_seed

    def make_splits(self):
        return digits_split(self.val_per_class, self.split_seed)
