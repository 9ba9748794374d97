"""Fixtures of the end-to-end tests."""
import pytest

from elt.jobs.train import train


@pytest.fixture
def tiny_ckpt(train_cfg):
    return train(train_cfg("N=1", "Lmax=2"))["ckpt_path"]
