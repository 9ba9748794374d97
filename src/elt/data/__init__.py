from elt.data.digits import DigitsDataModule
from elt.data.moving_digits import MovingDigitsDataModule
from elt.data.shards import ShardDataModule
from elt.data.ucf101 import UCF101DataModule

__all__ = ["DigitsDataModule", "MovingDigitsDataModule", "ShardDataModule", "UCF101DataModule"]
