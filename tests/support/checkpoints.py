"""Checkpoint weights, compared bit for bit (resume tests)."""
from __future__ import annotations

import torch


def weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"
