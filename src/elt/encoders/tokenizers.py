"""Tokenizer / autoencoder seam between data and models.

MaskGIT-ELT models discrete tokens (``Tokenizer``); DiT-ELT denoises continuous latents
(``Autoencoder``). The embedded datasets use lossless pixel versions of both. Pretrained networks
(VQGAN, MAGVIT, the SD VAE) come in as TorchScript files with ``encode``/``decode`` methods
(``ScriptedTokenizer``/``ScriptedAutoencoder``): one format whatever framework trained them, read
from a local path only. Shapes: images [B, C, H, W], videos [B, C, T, H, W], both in [0, 1].
"""
from __future__ import annotations

import math

import torch

from elt.runtime.files import require_local_file


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


class ScriptedNetwork:
    """A TorchScript file exporting ``encode`` and ``decode``, loaded once from a local path and
    moved to whichever device its input lives on (the wrappers are not nn.Modules: the frozen
    network stays out of the model's parameters and checkpoints)."""

    def __init__(self, path, what: str, how_to_get: str):
        p = require_local_file(path, what, how_to_get)
        try:
            self.net = torch.jit.load(str(p), map_location="cpu").eval()
        except Exception as e:
            raise ValueError(f"{what} {p} is not a loadable TorchScript file ({type(e).__name__}: {str(e)[:200]})") from None
        missing = [m for m in ("encode", "decode") if not hasattr(self.net, m)]
        if missing:
            raise ValueError(f"{what} {p} has no {' or '.join(missing)} method; export a module with encode() and decode()")
        self.what, self.path = what, p

    @torch.no_grad()
    def call(self, method: str, x: torch.Tensor, want_shape: tuple[int, ...]) -> torch.Tensor:
        self.net.to(x.device)
        out = getattr(self.net, method)(x)
        if tuple(out.shape[1:]) != tuple(want_shape):
            raise ValueError(f"{self.what} {self.path}: {method}() gave shape {tuple(out.shape[1:])} per item, "
                             f"the config says {tuple(want_shape)}")
        return out


class ScriptedTokenizer(Tokenizer):
    """VQGAN / MAGVIT from a TorchScript file: ``encode`` maps [B, *image_shape] in [0, 1] to token
    ids [B, *grid_shape]; ``decode`` maps them back."""

    def __init__(self, path, vocab_size: int, grid_shape, image_shape, how_to_get: str = "export it to TorchScript"):
        self.vocab_size = int(vocab_size)
        self.grid_shape, self.image_shape = tuple(int(g) for g in grid_shape), tuple(int(s) for s in image_shape)
        self.net = ScriptedNetwork(path, "tokenizer", how_to_get)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.net.call("encode", images, self.grid_shape).long()
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"tokenizer {self.net.path}: token ids outside [0, {self.vocab_size}) "
                             f"(got {int(tokens.min())}..{int(tokens.max())}); check data.tokenizer.vocab_size")
        return tokens.flatten(1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        grid = tokens.view(-1, *self.grid_shape)
        return self.net.call("decode", grid, self.image_shape).float().clamp(0, 1)


class ScriptedAutoencoder(Autoencoder):
    """The SD VAE or a video VAE from a TorchScript file; ``scale`` multiplies latents to roughly
    unit variance (0.18215 for the SD VAE)."""

    def __init__(self, path, latent_shape, image_shape, scale: float = 1.0, how_to_get: str = "export it to TorchScript"):
        self.latent_shape, self.image_shape = tuple(int(s) for s in latent_shape), tuple(int(s) for s in image_shape)
        self.scale = float(scale)
        self.net = ScriptedNetwork(path, "autoencoder", how_to_get)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.call("encode", images, self.latent_shape).float() * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net.call("decode", latents / self.scale, self.image_shape).float().clamp(0, 1)
