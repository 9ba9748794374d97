"""Classifier-free guidance: uncond + s·(cond − uncond), with the null class as the unconditional model.

Under guidance one network evaluation runs a doubled batch, [conditional; null-class]; at s = 1 it is
the plain conditional batch (``elt.core.flops.evals_per_step`` is the one rule for which)."""
from __future__ import annotations

import torch

from elt.core.flops import evals_per_step


def with_null_class(inputs: dict, null_class: int) -> dict:
    """The batch followed by its copy with every label replaced by ``null_class``."""
    null = torch.full_like(inputs["labels"], null_class)
    return {k: torch.cat([v, null if k == "labels" else v]) for k, v in inputs.items()}


def guide(both: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """uncond + s·(cond − uncond) of a [conditional; null-class] batch's outputs."""
    cond, uncond = both.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


def guidance_batch(inputs: dict, cfg_scale: float, null_class: int) -> dict:
    """What one guided evaluation feeds the network: the batch itself at s = 1, else doubled."""
    return inputs if evals_per_step(cfg_scale) == 1 else with_null_class(inputs, null_class)


def combine(out: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """The guided prediction from the outputs of ``guidance_batch``'s batch."""
    return out if evals_per_step(cfg_scale) == 1 else guide(out, cfg_scale)


def as_float(out: torch.Tensor, inputs: dict) -> torch.Tensor:
    """The default space guidance combines outputs in: the raw output in float32."""
    return out.float()
