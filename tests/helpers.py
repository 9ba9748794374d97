"""Tiny models for unit tests: real classes, shrunk."""
from __future__ import annotations

import torch

from elt.models.maskgit import MaskGITELT
from elt.tokenizers import PixelTokenizer


def tiny_maskgit(N: int = 2, Lmax: int = 3, ilsd: bool = True, **kw) -> MaskGITELT:
    torch.manual_seed(0)
    return MaskGITELT(
        PixelTokenizer(17, (1, 8, 8)), num_classes=10, N=N, Lmax=Lmax, width=32, heads=2, mlp_dim=64,
        ilsd={"enabled": ilsd, "Lmin": 1}, **kw,
    )


def digits_batch(n: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 17, (n, 1, 8, 8), generator=g).float() / 16
    return {"image": images, "label": torch.randint(0, 10, (n,), generator=g)}


class CallCounter:
    """Counts forward calls of a module (e.g. the first block = one per loop)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1
