"""The Fashion-MNIST raw reader on miniature IDX files in the distributed layout."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from elt.data.fashion_mnist import CLASSES, FashionMNISTRaw
from support.miniature import bar_class, make_fashion_mnist, write_idx


@pytest.fixture
def root(tmp_path):
    return make_fashion_mnist(tmp_path / "fm", train_per_class=6, test_per_class=2)


def test_splits_partition_the_training_file_and_test_is_t10k(root):
    train = FashionMNISTRaw(root, "train", val_per_class=2)
    val = FashionMNISTRaw(root, "val", val_per_class=2)
    test = FashionMNISTRaw(root, "test", val_per_class=2)
    assert (len(train), len(val), len(test)) == (40, 20, 20)
    assert not set(train.keys) & set(val.keys) and len(set(train.keys) | set(val.keys)) == 60
    assert all(k.startswith("t10k_") for k in test.keys) and train.classes == list(CLASSES)
    assert np.bincount(val.labels).tolist() == [2] * 10  # class-stratified hold-out
    item = train[3]
    assert item["image"].shape == (1, 28, 28) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() == 1.0
    assert bar_class(item["image"]) == item["label"] == train.labels[3]  # pixels and label agree
    x, y = val.tensors()
    assert x.shape == (20, 1, 28, 28) and y.tolist() == val.labels
    # the hold-out is a function of (val_per_class, split_seed) only
    assert FashionMNISTRaw(root, "val", val_per_class=2).keys == val.keys
    assert FashionMNISTRaw(root, "val", val_per_class=2, split_seed=1).keys != val.keys


def test_bad_inputs_are_one_line_naming_the_culprit(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        FashionMNISTRaw(tmp_path / "missing", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        FashionMNISTRaw(root, "validation")
    with pytest.raises(ValueError, match="val_per_class=7 but class 0 has 6"):
        FashionMNISTRaw(root, "train", val_per_class=7)
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:  # an images header where labels belong
        f.write(b"\x00\x00\x08\x03" + b"\x00" * 12)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz is not an IDX file of rank 1"):
        FashionMNISTRaw(root, "test")
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="20 t10k images but 3 labels"):
        FashionMNISTRaw(root, "test")
