"""Exponential moving average of a module's parameters, kept as buffers of that module.

Buffers, not a second copy of the network: they travel in ``state_dict`` (so ``load_run`` restores
them with no extra code), follow ``.to(device)``, are not counted as parameters and are never seen
by the optimiser. Sampling swaps them in for the duration of a ``with`` block.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn


class EMA(nn.Module):
    """shadow ← d·shadow + (1 − d)·param after every optimiser step.

    With ``warmup`` the decay is min(decay, (1 + n)/(10 + n)) at update n, so short runs (the CPU
    demos) are not dominated by the random initialisation that a fixed 0.9999 would keep for ~10k
    steps; DiT itself uses a fixed 0.9999.
    """

    def __init__(self, params: Iterable[torch.Tensor], decay: float = 0.9999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"model.ema_decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        params = list(params)
        self.shapes = [p.shape for p in params]
        self.register_buffer("shadow", torch.cat([p.detach().float().flatten() for p in params]))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def _shadows(self) -> list[torch.Tensor]:
        return [s.view(shape) for s, shape in zip(self.shadow.split([sh.numel() for sh in self.shapes]), self.shapes)]

    def _check(self, params: list[torch.Tensor]) -> None:
        if [p.shape for p in params] != self.shapes:
            raise ValueError("EMA: the parameters passed do not match the ones it was built from")

    @torch.no_grad()
    def update(self, params: Iterable[torch.Tensor]) -> None:
        params = list(params)
        self._check(params)
        d = self.current_decay()
        torch._foreach_lerp_(self._shadows(), [p.detach().float() for p in params], 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def reset(self, params: Iterable[torch.Tensor]) -> None:
        """Restart the average at these weights (e.g. after loading or editing them by hand)."""
        params = list(params)
        self._check(params)
        for s, p in zip(self._shadows(), params):
            s.copy_(p)
        self.num_updates.zero_()

    @torch.no_grad()
    def copy_to(self, params: Iterable[torch.Tensor]) -> None:
        params = list(params)
        self._check(params)
        for p, s in zip(params, self._shadows()):
            p.copy_(s)

    @contextmanager
    def applied(self, params: Iterable[torch.Tensor]):
        """Inside the block the parameters hold the averaged weights; restored afterwards."""
        params = list(params)
        backup = [p.detach().clone() for p in params]
        self.copy_to(params)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)
