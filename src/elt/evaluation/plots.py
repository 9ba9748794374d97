"""Sample grids (animated for videos) and the two curves of the sweep: quality vs loop count,
quality vs GFLOPs (with the loop schedules as points)."""
from __future__ import annotations

import functools
import logging
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from elt.runtime.files import atomic_path

log = logging.getLogger(__name__)
MIN_CELL_PIXELS = 64  # 8×8 digits are upscaled (nearest neighbour) to stay visible
MAX_GIF_FPS = 50  # GIF delays are whole 1/100 s, and viewers slow delays under 2/100 s to 1/10 s


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


def grid_frames(videos: torch.Tensor, labels: torch.Tensor, per_class: int, classes: list[int]) -> list[np.ndarray]:
    """One ``grid_array`` per time step of videos [B, C, T, H, W]: every cell plays its video."""
    return [grid_array(videos[:, :, t], labels, per_class, classes) for t in range(videos.shape[2])]


def save_animation(videos, labels, path: Path, per_class: int, classes: list[int], fps: float) -> list[Path]:
    """``path`` as an animated GIF (looping), and beside it the same as MP4 when ffmpeg is
    available; an MP4 that cannot be made is logged, never an error. Returns the files written."""
    from PIL import Image

    path = Path(path)
    frames = grid_frames(videos, labels, per_class, classes)
    first, *rest = [Image.fromarray(f) for f in frames]
    with atomic_path(path) as tmp:
        first.save(tmp, save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)
    written = [path]
    if write_mp4(frames, path.with_suffix(".mp4"), fps):
        written.append(path.with_suffix(".mp4"))
    return written


@functools.cache
def find_ffmpeg() -> str | None:
    """Looked up once per process, so a machine without ffmpeg says so once, not per grid."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        log.info("no ffmpeg on PATH: animated grids are written as GIF only, MP4 skipped")
    return exe


def write_mp4(frames: list[np.ndarray], path: Path, fps: float) -> bool:
    exe = find_ffmpeg()
    if exe is None:
        return False
    video = np.stack(frames)
    h, w = video.shape[1:3]
    # yuv420p (what players decode) needs even sides: pad with the grid's white background
    video = np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
    cmd = [exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{video.shape[2]}x{video.shape[1]}", "-r", f"{fps:g}", "-i", "-", "-pix_fmt", "yuv420p"]
    try:
        with atomic_path(path) as tmp:
            proc = subprocess.run([*cmd, str(tmp)], input=video.tobytes(), capture_output=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"ffmpeg exited with {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        log.warning("MP4 grid %s not written (%s); the GIF is", path, e)
        return False
    return True


def quality_figure(rows: list[dict], metrics: list[str], x: str, xlabel: str, title: str):
    """One panel per metric; the model's rows as a curve (extrapolated loop counts hollow), each
    reference row as a labelled horizontal line so the reader sees floor and trivial level."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure registry

    fig = Figure(figsize=(4.2 * len(metrics), 3.4))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    model = sorted((r for r in rows if r["row"] == "model"), key=lambda r: r["loops"])
    refs = [r for r in rows if r["row"] != "model"]
    for ax, m in zip(axes[0], metrics):
        good = [r for r in model if finite(r.get(m)) and finite(r.get(x))]
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
            if finite(r.get(m)):
                ax.axhline(r[m], color=f"C{i + 1}", ls="--", lw=1, label=r["name"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def add_schedule_points(fig, rows: list[dict], metrics: list[str]) -> None:
    """The schedule rows as labelled diamonds on the quality-vs-GFLOPs panels, beside the fixed-L curve."""
    points = [r for r in rows if r["row"] == "schedule" and r.get("gflops_per_sample") is not None]
    if not points:
        return
    for ax, m in zip(fig.axes, metrics):
        sel = [r for r in points if finite(r.get(m))]
        ax.scatter([r["gflops_per_sample"] for r in sel], [r[m] for r in sel], marker="D", color="C3", zorder=3,
                   label="loop schedules")
        for r in sel:
            ax.annotate(r["name"].removeprefix("schedule "), (r["gflops_per_sample"], r[m]), textcoords="offset points",
                        xytext=(4, -8), fontsize=6, color="C3")
    fig.axes[0].legend(fontsize=7)


def save_figure(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    return Path(path)


def finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
