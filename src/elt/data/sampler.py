"""A shuffling sampler that a checkpoint can resume mid-epoch.

The order of epoch e is a pure function of (seed, e), split across ranks like DistributedSampler
(it is one, so Lightning leaves it in place under DDP); ``start`` skips the items this rank already
trained on, so a run resumed at any step sees exactly the batches the uninterrupted run would.
"""
from __future__ import annotations

from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    def __init__(self, dataset: Dataset, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, drop_last: bool = True, epoch: int = 0, start: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.epoch, self.start = int(epoch), int(start)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a new epoch starts from its beginning
            self.start = 0
        super().set_epoch(epoch)

    def __iter__(self):
        order = list(super().__iter__())
        return iter(order[self.start:])
