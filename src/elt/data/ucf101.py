"""UCF-101 goes through shards like every raw dataset: ``python prepare.py data=ucf101 ...`` encodes
the videos once (elt.data.raw.UCF101Raw reads them), ``elt.data.ShardDataModule`` streams the
shards. ``UCF101DataModule`` is kept as a name for configs written before the shards existed."""
from elt.data.shards import ShardDataModule as UCF101DataModule

__all__ = ["UCF101DataModule"]
