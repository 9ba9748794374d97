"""Fixtures of the end-to-end tests: a checkpoint trained through train() and a shared evaluation cache."""
import pytest

from elt.jobs.train import train


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory):
    """One judge and one set of reference statistics for the whole session (hermetic: not data/cache)."""
    return tmp_path_factory.mktemp("eval_cache")


@pytest.fixture
def tiny_ckpt(train_cfg):
    return train(train_cfg("N=1", "Lmax=2"))["ckpt_path"]
