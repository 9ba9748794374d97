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


class ResumablePosition:
    """A LightningDataModule mix-in: the training position inside the epoch travels in the
    checkpoint (Lightning saves a datamodule's ``state_dict``), so a resumed run skips exactly the
    batches already trained on. ``self._resume`` ({"epoch", "batches"}) is updated in place: the
    module's loaders may hold a reference. train.py sets ``shuffle_seed`` to the run's seed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shuffle_seed = 0
        self._resume = {"epoch": 0, "batches": 0}

    def ranks(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) without one."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def state_dict(self) -> dict:
        trainer = self.trainer
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": trainer.current_epoch, "batches": int(done), "seed": self.shuffle_seed}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self._resume.update(epoch=int(state_dict["epoch"]), batches=int(state_dict["batches"]))
