"""The looped backbone shared by every model family.

A block of N unique transformer layers is applied L times with the same weights
(F_{N,L}(x) = g^L(x)). The loop count is an argument of every forward, and the backbone hands
back its state after any requested loops ("exits") from a single pass: ILSD's student and teacher,
validation at every loop count and early exit are all that one mechanism.

Two conditioning modes share the code: ``cond_dim=None`` gives plain pre-LN blocks (MaskGIT-ELT
puts its class token in the sequence); ``cond_dim=D`` gives DiT's adaLN-Zero blocks, whose
modulation is computed once per network evaluation and reused by every loop.

``checkpointing=True`` trades compute for memory in training: every (loop, block) application is
one recomputed segment, so the activations kept for backward are one state per block call instead
of every intermediate of every layer of every loop (benchmarks/results/activation_memory.md).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from elt.runtime.kernels import Linear, attention, linear


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN's x·(1 + scale) + shift in one pass over x (addcmul), not a product and then a sum."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


def gated_residual(x: torch.Tensor, gate: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """adaLN-Zero's x + gate·update in one pass (addcmul)."""
    return torch.addcmul(x, gate.unsqueeze(1), update)


class Modulation(nn.Sequential):
    """adaLN's conditioning MLP, a type of its own so that FSDP can make it a unit of its own: it runs
    once per network evaluation, not once per loop like the rest of its block (fsdp_wrap_policy)."""


class Block(nn.Module):
    """Pre-LN transformer layer; with ``cond_dim`` it is DiT's adaLN-Zero block."""

    def __init__(self, width: int, heads: int, mlp_dim: int, cond_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        affine = cond_dim is None  # adaLN supplies shift/scale, so the norms carry no affine params
        self.norm1 = nn.LayerNorm(width, elementwise_affine=affine, eps=1e-6)
        self.qkv = Linear(width, 3 * width)
        self.proj = Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=affine, eps=1e-6)
        self.fc1 = Linear(width, mlp_dim)
        self.fc2 = Linear(mlp_dim, width)
        self.modulation = Modulation(nn.SiLU(), nn.Linear(cond_dim, 6 * width)) if cond_dim is not None else None

    def modulation_params(self, cond: torch.Tensor | None):
        if self.modulation is None:
            return None
        return self.modulation(cond).chunk(6, dim=-1)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        out = attention(q, k, v, dropout_p=drop)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(linear(x, self.fc1.weight, self.fc1.bias, gelu=True))

    def forward(self, x: torch.Tensor, mod=None) -> torch.Tensor:
        if mod is None:
            x = x + self.attention(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = mod
        x = gated_residual(x, gate1, self.attention(modulate(self.norm1(x), shift1, scale1)))
        return gated_residual(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))


class LoopedBackbone(nn.Module):
    """N unique blocks looped L times; ``forward(x, loops, exits)`` returns the states at ``exits``.

    ``Lmax`` only sets the init scale (effective training depth N·Lmax); any ``loops`` ≥ 1 runs,
    including extrapolation beyond Lmax. Input re-injection and a loop-index embedding are offered
    as options (related work uses them); the paper's formula has neither, so both default to off.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        N: int,
        mlp_dim: int,
        Lmax: int = 1,
        cond_dim: int | None = None,
        input_injection: bool = False,
        loop_embedding: bool = False,
        max_loop_embeddings: int = 64,
        dropout: float = 0.0,
        checkpointing: bool = False,
    ):
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.width, self.heads, self.N, self.mlp_dim, self.cond_dim = width, heads, N, mlp_dim, cond_dim
        self.input_injection = input_injection
        self.checkpointing = bool(checkpointing)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_dim, cond_dim, dropout) for _ in range(N))
        self.loop_embed = nn.Parameter(torch.zeros(max_loop_embeddings, width)) if loop_embedding else None
        self.init_weights(effective_depth=N * Lmax)

    def init_weights(self, effective_depth: int) -> None:
        # GPT-2 style, residual projections scaled by the effective depth N·Lmax: a deep looped stack
        # starts near the identity, which lets the digits models leave the per-pixel plateau.
        residual_std = 0.02 / math.sqrt(2 * effective_depth)
        for blk in self.blocks:
            for lin in (blk.qkv, blk.fc1):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
            for lin in (blk.proj, blk.fc2):
                nn.init.normal_(lin.weight, std=residual_std)
                nn.init.zeros_(lin.bias)
            if blk.modulation is not None:  # adaLN-Zero: every block starts as the identity
                nn.init.zeros_(blk.modulation[-1].weight)
                nn.init.zeros_(blk.modulation[-1].bias)

    def compile_blocks(self, **options) -> None:
        """``torch.compile`` each unique block in place. Per block, not the whole loop: one block
        graph serves every loop and every exit, so neither ILSD's random student exit nor the loop
        count recompiles (a new batch shape or eval mode builds one more graph); parameter names
        are unchanged, so checkpoints load into eager models."""
        for blk in self.blocks:
            blk.compile(**options)

    def forward(
        self,
        x: torch.Tensor,
        loops: int,
        exits: Sequence[int] | None = None,
        cond: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        exits = [loops] if exits is None else list(exits)
        if loops < 1 or not exits or min(exits) < 1 or max(exits) > loops:
            raise ValueError(f"need 1 <= exits <= loops, got loops={loops}, exits={exits}")
        mods = self.modulations(cond)  # once per network evaluation
        # recompute in backward only when there is a backward: eval and sampling run without it.
        # Non-reentrant: gradients reach the parameters and the shared modulation, and the RNG
        # state is replayed, so dropout masks (and hence outputs and gradients) are unchanged.
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        wanted, states, x0 = set(exits), {}, x
        for loop in range(1, max(exits) + 1):  # nothing after the last exit is computed
            x = self.apply_loop(x, loop, mods, x0, recompute)
            if loop in wanted:
                states[loop] = x
        return [states[e] for e in exits]

    # ---- one loop at a time (per-sample early exit) --------------------------------------------
    def modulations(self, cond: torch.Tensor | None) -> list:
        """adaLN parameters of every block for ``cond`` (Nones without it): what ``forward``
        computes once per evaluation, for ``apply_loop``; rows follow ``cond``'s batch rows."""
        if (cond is None) != (self.cond_dim is None):
            raise ValueError("cond must be given exactly when the backbone was built with cond_dim")
        return [blk.modulation_params(cond) for blk in self.blocks]

    def apply_loop(self, x: torch.Tensor, loop: int, mods: list, x0: torch.Tensor,
                   recompute: bool = False) -> torch.Tensor:
        """Loop number ``loop`` (1-based) on state ``x`` with the input ``x0``: the body of
        ``forward``'s loop, public so that early exit can stop each sample at its own exit and
        drop the finished rows between loops. ``recompute``: activation checkpointing per block."""
        if self.input_injection and loop > 1:
            x = x + x0
        if self.loop_embed is not None:
            x = x + self.loop_embed[min(loop, len(self.loop_embed)) - 1]
        for blk, mod in zip(self.blocks, mods):
            x = checkpoint(blk, x, mod, use_reentrant=False) if recompute else blk(x, mod)
        return x

    @staticmethod
    def select_mods(mods: list, rows: torch.Tensor) -> list:
        """The modulations of the batch rows ``rows`` (a bool mask or indices)."""
        return [None if m is None else tuple(t[rows] for t in m) for m in mods]

    def flops(self, seq_len: int, loops: int) -> float:
        """Analytic matmul FLOPs of one forward at batch 1 (multiply-add = 2)."""
        d, m, s = self.width, self.mlp_dim, seq_len
        per_block = 2 * s * d * 3 * d + 2 * 2 * s * s * d + 2 * s * d * d + 2 * 2 * s * d * m
        modulation = self.N * 2 * self.cond_dim * 6 * d if self.cond_dim is not None else 0
        return float(per_block * self.N * loops + modulation)


def fsdp_wrap_policy():
    """FSDP auto-wrap policy: one unit per unique ``Block`` (configs/trainer/fsdp.yaml). A looped block
    is then one unit that runs L times per forward, gathered for each call, its gradient summed over
    the calls before one reduce-scatter. adaLN's ``Modulation`` (a third of a DiT block's weights) is
    a nested unit: it runs once per evaluation, outside the block's forward, so it must be gathered by
    a forward of its own, and is then gathered once instead of L times. Embeddings and heads stay in
    the root unit."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    return ModuleWrapPolicy({Block, Modulation})
