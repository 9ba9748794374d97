"""Class-stratified held-out splits of an in-memory labelled set (the embedded digits, Fashion-MNIST's
training file): the same items for every reader of the same settings."""
from __future__ import annotations

import numpy as np


def held_out_mask(labels: np.ndarray, num_classes: int, val_per_class: int, seed: int, name: str) -> np.ndarray:
    """True for the ``val_per_class`` items of each class held out, drawn class by class from one
    generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if val_per_class > len(idx):
            raise ValueError(f"{name}: val_per_class={val_per_class} but class {c} has {len(idx)} training images")
        mask[rng.permutation(idx)[:val_per_class]] = True
    return mask
