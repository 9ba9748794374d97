"""Models built from a row's config with shapes only: no tokenizer, autoencoder or weights are opened,
and every tensor is on the meta device (a 2.1B-parameter DiT costs no memory)."""
from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf, open_dict

from elt.encoders.tokenizers import Autoencoder, Tokenizer


class ShapeTokenizer(Tokenizer):
    """A tokenizer's shapes and nothing else: what a model needs to be built (the plan, benchmarks)."""

    def __init__(self, vocab_size: int, grid_shape, image_shape):
        self.vocab_size = int(vocab_size)
        self.grid_shape, self.image_shape = tuple(int(g) for g in grid_shape), tuple(int(s) for s in image_shape)

    def encode(self, images):
        raise NotImplementedError("ShapeTokenizer is a shape-only stand-in (elt.experiments.paper); it cannot encode images")

    def decode(self, tokens):
        raise NotImplementedError("ShapeTokenizer is a shape-only stand-in (elt.experiments.paper); it cannot decode tokens")


class ShapeAutoencoder(Autoencoder):
    def __init__(self, latent_shape, image_shape):
        self.latent_shape, self.image_shape = tuple(int(s) for s in latent_shape), tuple(int(s) for s in image_shape)

    def encode(self, images):
        raise NotImplementedError("ShapeAutoencoder is a shape-only stand-in (elt.experiments.paper); it cannot encode images")

    def decode(self, latents):
        raise NotImplementedError("ShapeAutoencoder is a shape-only stand-in (elt.experiments.paper); it cannot decode latents")


STAND_INS = {"tokenizer": (f"{__name__}.ShapeTokenizer", ("vocab_size", "grid_shape", "image_shape")),
             "autoencoder": (f"{__name__}.ShapeAutoencoder", ("latent_shape", "image_shape"))}


def shape_only(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose pretrained tokenizer / autoencoder (any node declaring its shapes, e.g.
    VQGAN 1024 codes on 16×16, the SD VAE's 4×32×32, MAGVIT's 4×16×16) is replaced by a shape-only
    stand-in; the pixel ones, which declare no such keys, are cheap and kept."""
    cfg = cfg.copy()
    for key, (target, keys) in STAND_INS.items():
        node = OmegaConf.select(cfg, f"data.{key}")
        if OmegaConf.is_dict(node) and all(k in node for k in keys):
            with open_dict(cfg):
                cfg.data[key] = {"_target_": target, **{k: OmegaConf.to_container(node, resolve=True)[k] for k in keys}}
    return cfg


def build_on_meta(cfg: DictConfig):
    """The configured model with every tensor on the meta device (parameters have shapes, no storage)."""
    import torch
    from hydra.utils import instantiate

    with torch.device("meta"):
        return instantiate(shape_only(cfg).model, _convert_="all")


def param_counts(model) -> dict:
    blocks = sum(p.numel() for p in model.backbone.blocks.parameters())
    return {"blocks": blocks, "total": sum(p.numel() for p in model.parameters())}


def num_tokens(model) -> int:
    return model.tokenizer.num_tokens if hasattr(model, "tokenizer") else math.prod(model.grid)
