"""Fixed sin-cos position tables (DiT / MAE), shared by DiT-ELT's positions and MaskGIT-ELT's
optional sin-cos initialisation of its learned tables: nearby positions get similar codes, so what
a model learns at one position carries to its neighbours."""
from __future__ import annotations

import torch

POS_INITS = ("normal", "sincos")  # MaskGIT-ELT's model.pos_init: MaskGIT's std-0.02 tables, or centred sin-cos


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[len(pos), dim] float64 table, [sin | cos] halves (DiT's 1-D building block)."""
    half = dim // 2
    omega = 1.0 / 10_000 ** (torch.arange(half, dtype=torch.float64) / half)
    a = pos.flatten().double()[:, None] * omega[None]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


def sincos_2d(width: int, h: int, w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table [h·w, width]: half the channels encode the row, half the column."""
    if width % 4:
        raise ValueError(f"scale.width must be divisible by 4 for 2-D sin-cos positions, got {width}")
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.cat([sincos_1d(width // 2, cols), sincos_1d(width // 2, rows)], dim=1).float()


def sincos_positions(width: int, grid: tuple[int, ...]) -> torch.Tensor:
    """[prod(grid), width] for a (h, w) or (t, h, w) token grid, tokens in row-major order.

    Video: the image table for every frame plus a full-width 1-D table over the tubelet index, so
    a frame's tokens share one spatial code and every position stays a fixed function of (t, h, w).
    """
    spatial = sincos_2d(width, *grid[-2:])
    if len(grid) == 2:
        return spatial
    temporal = sincos_1d(width, torch.arange(grid[0])).float()
    return (temporal[:, None] + spatial[None]).reshape(-1, width)
