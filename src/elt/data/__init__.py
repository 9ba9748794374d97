from elt.data.digits import DigitsDataModule
from elt.data.moving_digits import MovingDigitsDataModule

__all__ = ["DigitsDataModule", "MovingDigitsDataModule"]
