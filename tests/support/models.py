"""Tiny models of both families: the real classes, shrunk to test size."""
from __future__ import annotations

import torch

from elt.encoders.tokenizers import PixelAutoencoder, PixelTokenizer
from elt.models.dit import DiTELT
from elt.models.maskgit import MaskGITELT


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


def tiny_dit(N: int = 2, Lmax: int = 3, ilsd: bool = True, latent=(1, 8, 8), **kw) -> DiTELT:
    torch.manual_seed(0)
    kw = {"patch_size": 2, "ema_decay": 0.9, **kw}
    return DiTELT(PixelAutoencoder(latent), num_classes=10, N=N, Lmax=Lmax, width=32, heads=2, mlp_dim=64,
                  ilsd={"enabled": ilsd, "Lmin": 1}, **kw)


def randomise_zero_init(model: DiTELT) -> None:
    """adaLN-Zero makes a fresh model output 0 everywhere; tests of behaviour need it not to."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation" in name or "final_linear" in name or "class_embed" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    model.ema.reset(model.parameters())  # sampling uses the EMA weights


def random_dit(**kw) -> DiTELT:
    """tiny_dit with its zero-initialised layers randomised: outputs that differ by loop count and input."""
    model = tiny_dit(**kw)
    randomise_zero_init(model)
    return model
