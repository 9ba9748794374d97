from elt.data.digits import DigitsDataModule
from elt.data.fashion_mnist import FashionMNISTRaw
from elt.data.moving_digits import MovingDigitsDataModule
from elt.data.shards import ShardDataModule
from elt.data.ucf101 import UCF101DataModule

__all__ = ["DigitsDataModule", "FashionMNISTRaw", "MovingDigitsDataModule", "ShardDataModule", "UCF101DataModule"]
