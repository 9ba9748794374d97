"""Several processes, one table: ``torchrun --nproc_per_node=K eval.py ...``.

Every rank samples and featurises its share of the batches; rank 0 receives each round's outputs
in batch order and alone scores, writes and logs. Objects travel through a gloo group on the CPU
(features, probabilities and a few grid images are small), so the same code runs under gloo on CPU
and NCCL on GPUs.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from elt.runtime.config import ConfigError

log = logging.getLogger(__name__)

# Ranks > 0 wait at a collective while rank 0 alone trains the judge or computes reference
# statistics of a large split: the 10-30 min defaults would cut that short.
TIMEOUT = timedelta(hours=6)


@dataclass
class Ranks:
    """This process's place in the launch; world 1 (plain ``python eval.py``) needs no process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: object = None  # the gloo group every collective here runs on

    @classmethod
    def from_env(cls) -> "Ranks":
        """torchrun's WORLD_SIZE/RANK/LOCAL_RANK, checked before any work."""
        try:
            world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
            local = int(os.environ.get("LOCAL_RANK", rank))
        except ValueError:
            raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ConfigError(f"bad torchrun environment: RANK={rank}, LOCAL_RANK={local}, WORLD_SIZE={world}")
        return cls(rank, world, local)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        """The default group on the device's backend (NCCL for CUDA, else gloo), plus a gloo group
        for the CPU objects exchanged here."""
        if self.world == 1:
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        self.group = dist.new_group(backend="gloo", timeout=TIMEOUT) if device.type == "cuda" else dist.group.WORLD
        log.info("distributed evaluation: %d ranks (%s)", self.world, dist.get_backend())

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.group)

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` on rank 0, in rank order; None elsewhere."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (training a judge, writing a data cache), the others after it,
        so they read its caches instead of racing to write them."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()
