"""moving_digits: embedded class-conditional videos built from the embedded 8×8 digits.

Each video shows one digit (or two) bouncing on a small black canvas at one pixel per frame in
one of eight directions, reflecting off the walls. Real digit images, synthetic motion: the
spatial part is as hard as the image demo, and the temporal part (keep the digit, move it
consistently) is what a video model must add. Videos of the train split are made only from
train-split digits, and val from val, so no digit image is on both sides.

Generation is deterministic in (split seed, video seed, sizes) and cached as one ``.npz`` under
``cache_dir``; a corrupt cache file is regenerated with a warning. Batches are dicts
``{"image": [1, T, H, W] float in [0, 1], "label": class, "motion": direction index}``; the key
stays ``image`` so every consumer of a visual batch (tokenizers, judges, evaluation) reads
videos and images alike.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from elt.data.digits import InMemoryDataModule, digits_split
from elt.runtime.files import atomic_path, fingerprint

log = logging.getLogger(__name__)

DIRECTIONS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]  # 8 motions
DIGIT = 8  # side of the embedded digit images
GENERATOR_VERSION = 2  # bump when the rendering changes: cached files are then regenerated


class VideoLabelDataset(Dataset):
    def __init__(self, videos: torch.Tensor, labels: torch.Tensor, motions: torch.Tensor):
        self.videos, self.labels, self.motions = videos, labels, motions

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.videos[i], "label": int(self.labels[i]), "motion": int(self.motions[i])}


def trajectory(start: int, velocity: int, frames: int, room: int) -> np.ndarray:
    """Positions 0..room of one axis over ``frames`` frames, reflecting off both walls."""
    pos, out = start, []
    for _ in range(frames):
        out.append(pos)
        if not 0 <= pos + velocity <= room:
            velocity = -velocity
        pos += velocity
    return np.asarray(out)


def render(images: np.ndarray, labels: np.ndarray, frames: int, canvas: int, digits: int,
           videos_per_image: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 gray levels [n, 1, T, canvas, canvas], class labels, direction indices.

    With ``digits=2`` the second digit is drawn from the same split and the class is the ordered
    pair (10·first + second); overlapping ink takes the maximum. The motion label is the first
    digit's first move between frames 0 and 1, so it is always visible in the video."""
    if canvas <= DIGIT:
        raise ValueError(f"data.canvas ({canvas}) must exceed the digit size ({DIGIT}) for the digit to move")
    rng = np.random.default_rng(seed)
    n = len(images) * videos_per_image
    first = np.tile(np.arange(len(images)), videos_per_image)
    picks = [first] + [rng.integers(0, len(images), n) for _ in range(digits - 1)]
    room = canvas - DIGIT
    videos = np.zeros((n, 1, frames, canvas, canvas), dtype=np.uint8)
    motions = np.zeros(n, dtype=np.int64)
    for k, idx in enumerate(picks):
        starts = rng.integers(0, room + 1, (n, 2))
        dirs = rng.integers(0, len(DIRECTIONS), n)
        for i in range(n):
            dy, dx = DIRECTIONS[dirs[i]]
            ys = trajectory(starts[i, 0], dy, frames, room)
            xs = trajectory(starts[i, 1], dx, frames, room)
            if k == 0 and frames > 1:  # the first move as seen (a digit at a wall bounces at once)
                motions[i] = DIRECTIONS.index((int(ys[1] - ys[0]), int(xs[1] - xs[0])))
            elif k == 0:
                motions[i] = dirs[i]
            for t in range(frames):
                window = videos[i, 0, t, ys[t]:ys[t] + DIGIT, xs[t]:xs[t] + DIGIT]
                np.maximum(window, images[idx[i]], out=window)
    classes = sum(labels[idx] * 10 ** (digits - 1 - k) for k, idx in enumerate(picks))
    return videos, classes.astype(np.int64), motions


def moving_digits_split(frames: int = 4, canvas: int = 12, digits: int = 1, videos_per_image: int = 2,
                        val_per_class: int = 30, split_seed: int = 0, seed: int = 0,
                        cache_dir: str | Path | None = None):
    """(train, val) datasets; rendered once per setting and cached when ``cache_dir`` is given."""
    if frames < 1 or digits not in (1, 2) or videos_per_image < 1:
        raise ValueError(f"moving_digits: need frames >= 1, digits in (1, 2), videos_per_image >= 1; "
                         f"got frames={frames}, digits={digits}, videos_per_image={videos_per_image}")
    settings = dict(version=GENERATOR_VERSION, frames=frames, canvas=canvas, digits=digits,
                    videos_per_image=videos_per_image, val_per_class=val_per_class, split_seed=split_seed, seed=seed)
    path = Path(cache_dir) / "data" / f"moving_digits_{fingerprint(settings)}.npz" if cache_dir else None
    arrays = load_cache(path) if path is not None else None
    if arrays is None:
        arrays = {}
        train, val = digits_split(val_per_class, split_seed)
        # val: one video per held-out image; each split draws from its own seeded stream
        for split, ds, per_image, stream in (("train", train, videos_per_image, 0), ("val", val, 1, 1)):
            levels = np.rint(ds.images.numpy()[:, 0] * 16).astype(np.uint8)  # the digits' 17 gray levels
            v, y, m = render(levels, ds.labels.numpy(), frames, canvas, digits, per_image, seed * 2 + stream)
            arrays.update({f"{split}_videos": v, f"{split}_labels": y, f"{split}_motions": m})
        if path is not None:
            with atomic_path(path) as tmp:
                np.savez_compressed(tmp, **arrays)
            log.info("moving_digits rendered and cached at %s", path)

    def dataset(split):
        videos = torch.from_numpy(arrays[f"{split}_videos"].astype(np.float32) / 16.0)
        return VideoLabelDataset(videos, torch.from_numpy(arrays[f"{split}_labels"]),
                                 torch.from_numpy(arrays[f"{split}_motions"]))

    return dataset("train"), dataset("val")


def load_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # rebuilt, never trusted: generation is cheap and deterministic
        log.warning("moving_digits cache %s unreadable (%s: %s); regenerating", path, type(e).__name__, e)
        return None


class MovingDigitsDataModule(InMemoryDataModule):
    name = "moving_digits"
    num_motions = len(DIRECTIONS)
    min_val_batch = 100  # a video is 6-9x the tokens of an 8x8 image: smaller validation batches

    def __init__(self, batch_size: int = 32, frames: int = 4, canvas: int = 12, digits: int = 1,
                 videos_per_image: int = 2, val_per_class: int = 30, split_seed: int = 0, seed: int = 0,
                 cache_dir: str | None = None, num_workers: int = 0, num_classes: int | None = None):
        super().__init__(batch_size, num_workers)
        if num_classes is not None and num_classes != 10 ** digits:
            raise ValueError(f"data.num_classes ({num_classes}) must be {10 ** digits} for data.digits={digits}")
        self.num_classes = 10 ** digits
        self.image_shape = (1, frames, canvas, canvas)  # [C, T, H, W]: four dims mean video downstream
        self.split_args = dict(frames=frames, canvas=canvas, digits=digits, videos_per_image=videos_per_image,
                               val_per_class=val_per_class, split_seed=split_seed, seed=seed, cache_dir=cache_dir)

    def make_splits(self):
        return moving_digits_split(**self.split_args)
