"""Tokenizer / autoencoder seam between data and models.

MaskGIT-ELT models discrete tokens (``Tokenizer``); DiT-ELT denoises continuous latents
(``Autoencoder``). The embedded datasets use lossless pixel versions of both; VQGAN/MAGVIT and the
SD VAE plug into the same interfaces from local weight files.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch


class Tokenizer:
    """Images [B, *image_shape] in [0, 1]  <->  tokens [B, prod(grid_shape)] in [0, vocab_size)."""

    vocab_size: int
    grid_shape: tuple[int, ...]
    image_shape: tuple[int, ...]

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid_shape)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelTokenizer(Tokenizer):
    """Each pixel of each channel is one token: its quantised gray level (17 levels for digits)."""

    def __init__(self, levels: int, image_shape):
        if levels < 2:
            raise ValueError(f"tokenizer.levels must be >= 2, got {levels}")
        self.levels = self.vocab_size = int(levels)
        self.image_shape = self.grid_shape = tuple(int(s) for s in image_shape)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        q = torch.round(images.clamp(0, 1) * (self.levels - 1)).long()
        return q.flatten(1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.view(-1, *self.image_shape).float() / (self.levels - 1)


class Autoencoder:
    """Images [B, *image_shape] in [0, 1]  <->  latents [B, *latent_shape] (roughly unit scale)."""

    image_shape: tuple[int, ...]
    latent_shape: tuple[int, ...]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelAutoencoder(Autoencoder):
    """Identity seam for pixel-space diffusion: [0, 1] pixels to [-1, 1] 'latents'."""

    def __init__(self, image_shape):
        self.image_shape = self.latent_shape = tuple(int(s) for s in image_shape)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2.0 - 1.0

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents + 1.0) / 2.0).clamp(0, 1)


def require_local_file(path: str | Path | None, what: str, how_to_get: str) -> Path:
    """Weights and data that usually come from a hub are read from a local path only.

    Fails at once with one line naming the missing file and how to get it: never a download
    attempt that hangs, never a silent fallback.
    """
    if path is None or str(path).strip() in ("", "None", "null"):
        raise FileNotFoundError(f"{what}: no path configured; {how_to_get}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what}: file not found: {p}; {how_to_get}")
    return p
