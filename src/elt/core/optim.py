"""Weight-decay parameter groups decided by the module that owns each parameter.

Decay applies to the weight matrices of linear and convolution layers only (the blocks, DiT's patch
embedding and timestep MLP, the heads); biases, norms, ``nn.Embedding`` tables and free
``nn.Parameter`` tables (positions, frames, loop index) do not decay. The rule reads module types,
never ``p.ndim`` or names: FSDP (``use_orig_params``) turns every parameter into a 1-D shard view and
prefixes the names, but keeps the modules, so the groups come out the same wrapped or not.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

DECAY_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


def split_decay(module: nn.Module, decay_modules: tuple[type[nn.Module], ...] = DECAY_MODULES):
    """-> (decay, no_decay): lists of (name, parameter), trainable only, each parameter once."""
    decay, no_decay, seen = [], [], set()
    for mod_name, mod in module.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            if type(p).__name__ == "FlatParameter":  # FSDP without use_orig_params: modules are gone
                raise ValueError("param_groups needs the original parameters: wrap with FSDP(use_orig_params=True)")
            seen.add(id(p))
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            (decay if isinstance(mod, decay_modules) and p_name == "weight" else no_decay).append((name, p))
    return decay, no_decay


def param_groups(module: nn.Module, decay_modules: tuple[type[nn.Module], ...] = DECAY_MODULES) -> list[dict]:
    """Optimizer groups: the first takes the optimizer's weight_decay, the second has weight_decay 0."""
    decay, no_decay = split_decay(module, decay_modules)
    return [{"params": [p for _, p in decay]}, {"params": [p for _, p in no_decay], "weight_decay": 0.0}]


def with_fused(factory, fused: bool):
    """The optimizer factory (a ``functools.partial`` of an optimizer class; None = AdamW's defaults) with
    ``fused=True`` when ``fused`` and it builds Adam / AdamW without choosing ``fused`` or ``foreach``
    itself: one multi-tensor kernel per step instead of a loop of small ones (CUDA, and CPUs since
    torch 2.4). Other optimizers, and a factory that chose, are returned unchanged."""
    factory = factory if factory is not None else functools.partial(torch.optim.AdamW)
    func, keywords = getattr(factory, "func", factory), getattr(factory, "keywords", {}) or {}
    if not fused or func not in (torch.optim.AdamW, torch.optim.Adam) or {"fused", "foreach"} & set(keywords):
        return factory
    return functools.partial(factory, fused=True)
