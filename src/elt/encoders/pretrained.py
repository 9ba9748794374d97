"""Pretrained tokenizers / autoencoders from diffusers model directories, read locally only.

``DiffusersVQTokenizer`` wraps a ``diffusers.VQModel`` (a VQGAN: MaskGIT's converted tokenizer,
aMUSEd's ``vqvae/``) as a ``Tokenizer``; ``DiffusersAutoencoderKL`` wraps an ``AutoencoderKL``
(the SD VAE) as an ``Autoencoder``. Both read their vocabulary / token grid / latent shape from the
directory's ``config.json`` and check them against the data config, so a run with the wrong
weights stops before training. Videos ``(C, T, H, W)`` go through the same image network frame by
frame. The networks are frozen, run in fp32 outside any autocast (a token id must not depend on
the training precision), in chunks of at most ``max_batch`` images, and follow their input to its
device: the wrappers are plain objects held by the model, so Lightning neither moves them nor puts
their weights into checkpoints.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from elt.runtime.cli import one_line
from elt.runtime.config import ConfigError
from elt.runtime.files import file_fingerprint, fingerprint
from elt.encoders.tokenizers import Autoencoder, Tokenizer

WEIGHT_SUFFIXES = (".safetensors", ".bin")
HOW_TO_GET_VQ = ('on a connected machine run `hf download amused/amused-256 --include "vqvae/*" '
                 '--local-dir <dir>` and set data.tokenizer.path=<dir>/vqvae data.tokenizer.vocab_size=8192 '
                 "data.tokenizer.normalize=false (aMUSEd's VQ is a diffusers VQModel: 8192 codes, images in [0, 1]), "
                 "or convert MaskGIT's VQGAN to a diffusers VQModel and save_pretrained it to the configured path")
HOW_TO_GET_KL = ("on a connected machine run `hf download stabilityai/sd-vae-ft-ema --local-dir <dir>` "
                 "and set path=<dir>")


def require_local_dir(path, what: str, how_to_get: str) -> Path:
    """A diffusers model directory (``config.json`` + weights) on local disk, or one line saying
    which is missing and how to fetch it: never a hub lookup that hangs offline."""
    if path is None or str(path).strip() in ("", "None", "null"):
        raise FileNotFoundError(f"{what}: no path configured; {how_to_get}")
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise FileNotFoundError(f"{what}: directory not found: {p}; {how_to_get}")
    if not (p / "config.json").is_file():
        inside = sorted(d.name for d in p.iterdir() if (d / "config.json").is_file())
        hint = f" (a pipeline? its model is in {', '.join(inside)}/: point path there)" if inside else ""
        raise FileNotFoundError(f"{what}: no config.json in {p}{hint}; {how_to_get}")
    return p


class DiffusersNetwork:
    """A frozen diffusers model of class ``class_name`` loaded from a local directory."""

    def __init__(self, class_name: str, path, what: str, how_to_get: str, max_batch: int):
        p = require_local_dir(path, what, how_to_get)
        try:
            declared = json.loads((p / "config.json").read_text()).get("_class_name")
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"{what}: {p / 'config.json'} is not a readable JSON object ({e})") from None
        if declared not in (None, class_name):
            raise ValueError(f"{what}: {p} holds a diffusers {declared}, expected a {class_name}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"data.{what}.max_batch must be an integer >= 1, got {max_batch!r}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read before huggingface_hub's first import
        import diffusers

        low_memory = importlib.util.find_spec("accelerate") is not None  # else diffusers warns and loads plainly
        try:  # a local directory and local_files_only: diffusers never contacts the hub
            net = getattr(diffusers, class_name).from_pretrained(str(p), local_files_only=True,
                                                                 low_cpu_mem_usage=low_memory)
        except Exception as e:
            raise ValueError(f"{what}: {p} could not be loaded as a {class_name} ({one_line(e, foreign=True)})") from None
        self.net = net.eval().requires_grad_(False).float()
        self.config, self.path, self.what, self.class_name = net.config, p, what, class_name
        self.max_batch = max_batch
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """Hash of config.json and every weight file's bytes (computed once, on first use): two
        fine-tunes of one architecture (sd-vae-ft-ema vs -mse) share config and file sizes."""
        if self._fingerprint is None:
            files = sorted(f for f in self.path.iterdir()
                           if f.is_file() and (f.name == "config.json" or f.name.endswith(WEIGHT_SUFFIXES)))
            self._fingerprint = fingerprint({"class": self.class_name, "files": {f.name: file_fingerprint(f) for f in files}})
        return self._fingerprint

    def downsampling(self) -> int:
        """Encoder stride: every down block but the last halves the resolution."""
        return 2 ** (len(self.config.down_block_types) - 1)

    def spatial_grid(self, image_shape: tuple[int, ...], key: str) -> tuple[int, int]:
        c, h, w, f = image_shape[0], image_shape[-2], image_shape[-1], self.downsampling()
        if c != self.config.in_channels:
            raise ConfigError(f"{key}: images have {c} channels but the {self.class_name} at {self.path} takes "
                              f"in_channels={self.config.in_channels}")
        if h % f or w % f:
            raise ConfigError(f"{key}: image size {h}x{w} is not divisible by the encoder's stride {f} "
                              f"({self.class_name} at {self.path})")
        return h // f, w // f

    def check_input(self, x: torch.Tensor, want: tuple[int, ...], method: str) -> None:
        if tuple(x.shape[1:]) != tuple(want):
            raise ValueError(f"{self.what} {self.path}: {method}() got shape {tuple(x.shape[1:])} per item, "
                             f"the config says {tuple(want)}")

    @torch.no_grad()
    def map(self, fn, x: torch.Tensor) -> torch.Tensor:
        """``fn`` over chunks of at most ``max_batch`` items, on ``x``'s device, autocast off."""
        if next(self.net.parameters()).device != x.device:
            self.net.to(x.device)
        with torch.autocast(x.device.type, enabled=False):
            return torch.cat([fn(chunk) for chunk in x.split(self.max_batch)])


def as_shape(value, key: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a list of integers, got {value!r}") from None


def agree(key: str, given, actual, source: str):
    """The data config's value if it matches the weights' own, which it defaults to."""
    if given is not None and given != actual:
        raise ConfigError(f"{key}={list(given) if isinstance(given, tuple) else given} but {source} gives "
                          f"{list(actual) if isinstance(actual, tuple) else actual}; fix the config or the weights path")
    return actual


def check_image_shape(image_shape, key: str) -> tuple[int, ...]:
    shape = as_shape(image_shape, key)
    if shape is None or len(shape) not in (3, 4):
        raise ConfigError(f"{key} must be (C, H, W) for images or (C, T, H, W) for videos, got {image_shape!r}")
    return shape


def to_frames(x: torch.Tensor, video: bool) -> torch.Tensor:
    """[B, C, T, H, W] -> [B·T, C, H, W] (frame-major within each item); images unchanged."""
    return x.transpose(1, 2).flatten(0, 1) if video else x


def from_frames(y: torch.Tensor, batch: int, video: bool) -> torch.Tensor:
    """[B·T, C, H, W] -> [B, C, T, H, W]; images unchanged."""
    return y.view(batch, -1, *y.shape[1:]).transpose(1, 2).contiguous() if video else y


class DiffusersVQTokenizer(Tokenizer):
    """A ``diffusers.VQModel``: images -> encoder -> quant_conv -> nearest codebook entry's index,
    tokens [B, h·w] (videos: [B, T·h·w], frame by frame, grid (T, h, w)); decode looks the codes
    up and runs post_quant_conv + decoder. ``normalize``: the network takes [-1, 1] (diffusers'
    default); aMUSEd's VQ takes [0, 1] (normalize=false)."""

    def __init__(self, path, image_shape, vocab_size: int | None = None, grid_shape=None, normalize: bool = True,
                 max_batch: int = 32, how_to_get: str = HOW_TO_GET_VQ):
        self.image_shape = check_image_shape(image_shape, "data.tokenizer.image_shape")
        self.video, self.normalize = len(self.image_shape) == 4, bool(normalize)
        self.net = DiffusersNetwork("VQModel", path, "tokenizer", how_to_get, max_batch)
        cfg, where = self.net.config, f"the VQModel at {self.net.path}"
        self.hw = self.net.spatial_grid(self.image_shape, "data.tokenizer")
        self.vocab_size = agree("data.tokenizer.vocab_size", vocab_size, int(cfg.num_vq_embeddings),
                                f"{where} (num_vq_embeddings)")
        self.grid_shape = agree("data.tokenizer.grid_shape", as_shape(grid_shape, "data.tokenizer.grid_shape"),
                                (*self.image_shape[1:-2], *self.hw),
                                f"{where} (image size / 2**(len(down_block_types)-1) = {self.net.downsampling()})")

    @property
    def fingerprint(self) -> str:
        return fingerprint({"net": self.net.fingerprint, "normalize": self.normalize, "grid": self.grid_shape})

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.net.check_input(images, self.image_shape, "encode")
        vq, per_frame = self.net.net, self.hw[0] * self.hw[1]

        def encode(x):
            x = x.float()
            h = vq.encode(x * 2 - 1 if self.normalize else x).latents
            _, _, (_, _, ids) = vq.quantize(h)  # ids of the nearest codes, [n·h·w(, 1)]
            return ids.reshape(len(x), -1)

        tokens = self.net.map(encode, to_frames(images, self.video)).long()
        if tokens.shape[1] != per_frame:
            raise ValueError(f"tokenizer {self.net.path}: encoder gave {tokens.shape[1]} tokens per frame, expected "
                             f"{per_frame} from the grid {list(self.grid_shape)}")
        return tokens.reshape(len(images), -1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] != self.num_tokens:
            raise ValueError(f"tokenizer {self.net.path}: decode() takes [B, {self.num_tokens}] token ids, "
                             f"got shape {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"tokenizer {self.net.path}: token ids outside [0, {self.vocab_size}) "
                             f"(got {int(tokens.min())}..{int(tokens.max())})")
        vq, (h, w) = self.net.net, self.hw
        dim = vq.quantize.vq_embed_dim

        def decode(ids):
            ids, shape = ids.long().reshape(-1), (len(ids), h, w, dim)
            if vq.config.lookup_from_codebook:  # decode() looks the ids up itself (aMUSEd)
                return vq.decode(ids, force_not_quantize=True, shape=shape).sample
            return vq.decode(vq.quantize.get_codebook_entry(ids, shape), force_not_quantize=True).sample

        frames = tokens.reshape(len(tokens) * (self.num_tokens // (h * w)), h * w)
        out = self.net.map(decode, frames)
        out = (out + 1) / 2 if self.normalize else out
        return from_frames(out, len(tokens), self.video).clamp(0, 1)


class DiffusersAutoencoderKL(Autoencoder):
    """A ``diffusers.AutoencoderKL`` (the SD VAE): latent = (posterior sample, or its mean with
    sample=false, − shift_factor) × scaling_factor, both from config.json (0.18215 and none for the
    SD VAE), so DiT sees roughly unit-variance latents; videos frame by frame, [B, C, T, h, w]."""

    def __init__(self, path, image_shape, latent_shape=None, sample: bool = True, normalize: bool = True,
                 max_batch: int = 32, how_to_get: str = HOW_TO_GET_KL):
        self.image_shape = check_image_shape(image_shape, "data.autoencoder.image_shape")
        self.video, self.sample, self.normalize = len(self.image_shape) == 4, bool(sample), bool(normalize)
        self.net = DiffusersNetwork("AutoencoderKL", path, "autoencoder", how_to_get, max_batch)
        cfg = self.net.config
        h, w = self.net.spatial_grid(self.image_shape, "data.autoencoder")
        self.latent_shape = agree("data.autoencoder.latent_shape", as_shape(latent_shape, "data.autoencoder.latent_shape"),
                                  (int(cfg.latent_channels), *self.image_shape[1:-2], h, w),
                                  f"the AutoencoderKL at {self.net.path} (latent_channels, image size / "
                                  f"2**(len(down_block_types)-1) = {self.net.downsampling()})")
        self.scale = float(cfg.scaling_factor)
        self.shift = float(getattr(cfg, "shift_factor", None) or 0.0)
        self.frame_latent = (self.latent_shape[0], h, w)

    @property
    def fingerprint(self) -> str:
        """Not ``sample``: shards store the posterior itself, and training reads ``sample`` to draw
        from it or take its mean."""
        return fingerprint({"net": self.net.fingerprint, "normalize": self.normalize, "scale": self.scale,
                            "shift": self.shift})

    def posterior(self, images: torch.Tensor) -> torch.Tensor:
        """The posterior in latent units, ``[B, 2, *latent_shape]``: (mean − shift) × scale and the
        log-variance + 2·log(scale), so mean + exp(logvar / 2)·ε is a latent ``encode`` could give."""
        self.net.check_input(images, self.image_shape, "encode")
        vae = self.net.net
        log_scale = 2 * torch.log(torch.tensor(abs(self.scale), dtype=torch.float64)).item()

        def moments(x):
            x = x.float()
            dist = vae.encode(x * 2 - 1 if self.normalize else x).latent_dist
            return torch.stack([(dist.mean - self.shift) * self.scale, dist.logvar + log_scale], dim=1)

        m = self.net.map(moments, to_frames(images, self.video))  # [B·T, 2, C, h, w]
        return torch.stack([from_frames(m[:, k], len(images), self.video) for k in (0, 1)], dim=1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.net.check_input(images, self.image_shape, "encode")
        vae = self.net.net

        def encode(x):
            x = x.float()
            posterior = vae.encode(x * 2 - 1 if self.normalize else x).latent_dist
            return ((posterior.sample() if self.sample else posterior.mode()) - self.shift) * self.scale

        return from_frames(self.net.map(encode, to_frames(images, self.video)), len(images), self.video)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.net.check_input(latents, self.latent_shape, "decode")
        vae = self.net.net
        out = self.net.map(lambda z: vae.decode(z.float() / self.scale + self.shift).sample, to_frames(latents, self.video))
        out = (out + 1) / 2 if self.normalize else out
        return from_frames(out, len(latents), self.video).clamp(0, 1)
