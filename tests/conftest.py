"""Put src/ and tests/ (for the support package) on the path, pin the threads, and the fixtures every
kind of test uses."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent / "src"), str(TESTS)]
os.environ.setdefault("ELT_ROOT", str(TESTS.parent))
torch.set_num_threads(2)

from elt.evaluation import judges  # noqa: E402  (needs the path above)
from support.config import compose_cfg, tiny_train  # noqa: E402


@pytest.fixture
def train_cfg(tmp_path):
    """A factory: train config shrunk to a handful of CPU steps."""

    def make(*overrides: str):
        base = ["scale=tiny", *tiny_train(tmp_path / "cache")]
        return compose_cfg("train", base + list(overrides), tmp_path / "train")

    return make


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory):
    """One cache for the session's evaluations of digits checkpoints (hermetic: not data/cache), its
    judge trained up front: each evaluation then reads that judge instead of training its own."""
    cache = tmp_path_factory.mktemp("eval_cache")
    data = compose_cfg("train", []).data.module
    judges.load_or_train_judge("digits", instantiate(data), data, cache)
    return cache
