"""Datasets: embedded digits, raw-data readers, and the webdataset shards every real dataset trains from."""
from elt.data.digits import DigitsDataModule
from elt.data.fashion_mnist import FashionMNISTRaw
from elt.data.moving_digits import MovingDigitsDataModule
from elt.data.shards.datamodule import ShardDataModule

__all__ = ["DigitsDataModule", "FashionMNISTRaw", "MovingDigitsDataModule", "ShardDataModule"]
