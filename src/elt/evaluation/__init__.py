"""Any-time evaluation: every loop count of a checkpoint scored against real data (FID/IS/FVD,
conditional accuracy, GFLOPs, wall time), as a table, plots, grids and logger entries."""
from elt.evaluation.evaluate import evaluate

__all__ = ["evaluate"]
