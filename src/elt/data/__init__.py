from elt.data.digits import DigitsDataModule

__all__ = ["DigitsDataModule"]
