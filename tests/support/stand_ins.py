"""Stand-ins for the pretrained networks and files the real configs load (I3D, MAGVIT, a video VAE, diffusers
VQModel / AutoencoderKL, InceptionV3, ADM's reference npz): their interfaces and shapes, random weights, test speed."""
from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL, VQModel
from torch import nn

from elt.evaluation.extractors import FeatureExtractor


class TinyI3D(nn.Module):
    """StyleGAN-V's detector call convention on a network small enough for a test."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 12)

    def forward(self, videos: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        assert videos.dtype == torch.uint8 and videos.shape[1] == 3
        x = videos.float()
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = nn.functional.interpolate(x, size=(x.shape[2], 16, 16), mode="trilinear", align_corners=False)
        feats = self.proj(x.mean((3, 4)).transpose(1, 2)).flatten(1)  # per-frame colour, projected
        return feats if return_features else feats.softmax(-1)


class TinyMagvit(torch.nn.Module):
    """MAGVIT's interface and shapes: [B, 3, 16, 128, 128] <-> ids [B, 4, 16, 16] from 1024."""

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.nn.functional.avg_pool3d(x.mean(1, keepdim=True), (4, 8, 8))[:, 0]
        return (g * 1023).round().long().clamp(0, 1023)

    @torch.jit.export
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        v = (ids.float() / 1023)[:, None].repeat_interleave(4, 2).repeat_interleave(8, 3).repeat_interleave(8, 4)
        return v.expand(-1, 3, -1, -1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)


def save_magvit_stand_in(path):
    """A TorchScript file with MAGVIT's UCF-101 shapes, for tests of data=ucf101 (no real weights)."""
    torch.jit.script(TinyMagvit()).save(str(path))
    return path


class TinyVideoVAE(torch.nn.Module):
    """A video autoencoder's interface: [B, 3, 16, 128, 128] <-> latents [B, 4, 4, 16, 16]."""

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool3d(x, (4, 8, 8))[:, :3].repeat(1, 2, 1, 1, 1)[:, :4] * 2 - 1

    @torch.jit.export
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((z[:, :3] + 1) / 2).repeat_interleave(4, 2).repeat_interleave(8, 3).repeat_interleave(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)


def save_video_vae_stand_in(path):
    torch.jit.script(TinyVideoVAE()).save(str(path))
    return path


TINY_AE = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
           block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4)


def save_tiny_vq(path, in_channels: int = 3, codes: int = 32, **kw):
    """A random VQModel: stride 2 (two down blocks); its codebook is drawn from the encodings of
    random images, so that encodings use many codes (like a trained one, unlike its random init)."""
    torch.manual_seed(0)
    vq = VQModel(in_channels=in_channels, out_channels=in_channels, num_vq_embeddings=codes, **TINY_AE, **kw)
    with torch.no_grad():
        h = vq.encode(torch.rand(codes, in_channels, 16, 16) * 2 - 1).latents
        vq.quantize.embedding.weight.copy_(h.permute(0, 2, 3, 1).flatten(0, 2)[torch.randperm(codes * 64)[:codes]])
    vq.save_pretrained(str(path))
    return path


def save_tiny_kl(path, in_channels: int = 3, **kw):
    torch.manual_seed(0)
    AutoencoderKL(in_channels=in_channels, out_channels=in_channels, **TINY_AE, **kw).save_pretrained(str(path))
    return path


def save_imagenet_stand_ins(directory):
    """Random diffusers models with the shapes data=imagenet expects at 256x256 (a 16x16 grid of
    1024 codes; 4x32x32 latents), a few channels wide: for tests that build its models.
    Returns (VQModel dir, AutoencoderKL dir)."""
    narrow = dict(layers_per_block=1, norm_num_groups=2, latent_channels=4)
    torch.manual_seed(0)
    vq = VQModel(down_block_types=("DownEncoderBlock2D",) * 5, up_block_types=("UpDecoderBlock2D",) * 5,
                 block_out_channels=(4,) * 5, num_vq_embeddings=1024, **narrow)
    vq.save_pretrained(str(directory / "vq"))
    kl = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                       block_out_channels=(4,) * 4, **narrow)
    kl.save_pretrained(str(directory / "vae"))
    return directory / "vq", directory / "vae"


class StandInInception(FeatureExtractor):
    """InceptionV3's name, metric and 2048-d pool features, from a fixed random projection (no
    weights here): what ADM's statistics are compared with, at test speed."""

    name, modality, fd_metric = "inception", "image", "fid"

    def __init__(self, weights_path=None, pixels: int = 64):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(pixels, 2048, generator=g) / 8)
        self.fingerprint = "stand-in-inception"

    def forward(self, x):
        self.check_input(x)
        return {"features": torch.tanh(x.flatten(1) @ self.proj)}


def features_of(images: torch.Tensor) -> np.ndarray:
    return StandInInception(pixels=images[0].numel())(images)["features"].double().numpy()


def write_npz(path, mu, sigma, **extra):
    np.savez(path, mu=mu, sigma=sigma, **extra)
    return path
