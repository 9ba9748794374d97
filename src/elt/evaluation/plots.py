"""Sample grids and the two curves of the sweep: quality vs loop count, quality vs GFLOPs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from elt.files import atomic_path

MIN_CELL_PIXELS = 64  # 8×8 digits are upscaled (nearest neighbour) to stay visible


def grid_array(images: torch.Tensor, labels: torch.Tensor, per_class: int, classes: list[int], pad: int = 2) -> np.ndarray:
    """uint8 [H, W, 3] grid: one row per class in ``classes``, ``per_class`` samples each.

    Videos [B, C, T, H, W] become filmstrips (frames side by side) in each cell, so the same
    code serves both modalities."""
    if images.ndim == 5:
        images = torch.cat(images.unbind(2), dim=-1)  # [B, C, H, T*W]
    images = images.detach().float().cpu().clamp(0, 1)
    labels = labels.cpu()
    per_class = min(per_class, max(int((labels == c).sum()) for c in classes))  # no empty columns
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    c, h, w = images.shape[1:]
    scale = max(1, math.ceil(MIN_CELL_PIXELS / h))
    ch, cw = h * scale + pad, w * scale + pad
    canvas = torch.ones(c, len(classes) * ch + pad, per_class * cw + pad)
    for r, cls in enumerate(classes):
        idx = torch.nonzero(labels == cls).flatten()[:per_class]
        for col, i in enumerate(idx.tolist()):
            cell = images[i].repeat_interleave(scale, 1).repeat_interleave(scale, 2)
            canvas[:, pad + r * ch: pad + r * ch + h * scale, pad + col * cw: pad + col * cw + w * scale] = cell
    return (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(images, labels, path: Path, per_class: int, classes: list[int]) -> Path:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(grid_array(images, labels, per_class, classes)).save(tmp)
    return Path(path)


def quality_figure(rows: list[dict], metrics: list[str], x: str, xlabel: str, title: str):
    """One panel per metric; the model's rows as a curve (extrapolated loop counts hollow), each
    reference row as a labelled horizontal line so the reader sees floor and trivial level."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure registry

    fig = Figure(figsize=(4.2 * len(metrics), 3.4))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    model = sorted((r for r in rows if r["row"] == "model"), key=lambda r: r["loops"])
    refs = [r for r in rows if r["row"] != "model"]
    for ax, m in zip(axes[0], metrics):
        good = [r for r in model if _finite(r.get(m)) and _finite(r.get(x))]
        if good:
            ax.plot([r[x] for r in good], [r[m] for r in good], "-", color="C0", zorder=1)
            for beyond, face, label in ((False, "C0", "model, L ≤ Lmax"), (True, "white", "model, L > Lmax")):
                sel = [r for r in good if r["extrapolated"] == beyond]
                if sel:
                    ax.scatter([r[x] for r in sel], [r[m] for r in sel], facecolors=face, edgecolors="C0", zorder=2, label=label)
            if x == "loops":
                ax.set_xticks([r["loops"] for r in good])
            else:
                for r in good:
                    ax.annotate(f"L={r['loops']}", (r[x], r[m]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        for i, r in enumerate(refs):
            if _finite(r.get(m)):
                ax.axhline(r[m], color=f"C{i + 1}", ls="--", lw=1, label=r["name"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    return Path(path)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
