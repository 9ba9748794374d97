"""What every raw reader shares.

A reader is a map-style ``Dataset`` of ``{"image": float32 in [0, 1], "label": int, "key": str}``
(images ``[3, R, R]``, videos ``[3, T, R, R]``) and lists ``.labels``, ``.keys`` and ``.classes``
from file names and list files alone, without decoding anything, so class counts and shard plans
are known up front. Its ``crop`` names the resize-and-crop rule, which the shard index records.

Unreadable files: ``ds[i]`` always raises ``ValueError`` naming the file (a map-style dataset
cannot drop an index). ``iter_items()`` streams a whole split, each file decoded once: with
``skip_bad=True`` it leaves out the items of an unreadable file, counts the file in ``.skipped``
(with UCF-101's ``clip="all"``: each clip of it) and logs the count at the end; with
``skip_bad=False`` it raises like ``ds[i]``. ``.labels`` / ``.keys`` list every file found,
readable or not, since finding out would mean decoding.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
FLIPS = ("none", "both", "random")
FLIP_SUFFIX = "_flip"


class Source(NamedTuple):
    """One file to decode. Videos: ``start`` is the clip's first frame (-1: the centre clip,
    placed at decode from the frame count; ``clip="all"`` gives one Source per clip)."""
    path: str
    label: int
    key: str
    start: int = 0


def adm_center_crop(image, resolution: int) -> np.ndarray:
    """ADM's (guided-diffusion, DiT) centre crop: BOX-halve while the short side is at least twice
    the target (a cheap, alias-free reduction), BICUBIC to short side = ``resolution``, then crop
    the centre. PIL image in, uint8 ``[R, R, C]`` out."""
    from PIL import Image

    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    a = np.asarray(image)
    top, left = (a.shape[0] - resolution) // 2, (a.shape[1] - resolution) // 2
    return a[top:top + resolution, left:left + resolution]


# Pillow converts these to 8-bit RGB itself (alpha dropped, as ADM's and torchvision's readers do, so
# statistics match theirs; palettes looked up; CMYK and YCbCr by Pillow's formulas)
EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}  # 16-bit PNG / TIFF; "I" holds them too


def to_rgb(im):
    """Any image a folder can hold as 8-bit RGB, or ValueError naming the mode. Pillow's own
    conversion clips 16-bit values at 255 (a 16-bit PNG reads as pure white): those are scaled
    (x / 257, so 65535 -> 255); float images must lie in [0, 1]."""
    import numpy as np
    from PIL import Image

    if im.mode in EIGHT_BIT_MODES:
        return im.convert("RGB")
    if im.mode in SIXTEEN_BIT_MODES:
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"image mode {im.mode} holds values in [{a.min()}, {a.max()}]: only 16-bit images "
                             "(0..65535) are read; convert it to 8-bit RGB")
        return Image.fromarray(np.rint(a / 257.0).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise ValueError(f"image mode F (32-bit float) holds values in [{np.nanmin(a):g}, {np.nanmax(a):g}]: "
                             "only [0, 1] is read; convert it to 8-bit RGB")
        return Image.fromarray(np.rint(a * 255).astype(np.uint8), "L").convert("RGB")
    raise ValueError(f"image mode {im.mode} is not read; convert it to 8-bit RGB")


def decode_image(path: str, resolution: int) -> torch.Tensor:
    """Decode by content (ImageNet holds CMYK and grayscale JPEGs and a PNG named .JPEG), to 8-bit RGB
    (``to_rgb``), ADM-crop: float32 ``[3, R, R]`` in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = to_rgb(im)
    return torch.from_numpy(adm_center_crop(rgb, resolution).copy()).permute(2, 0, 1).float().div_(255)


def list_images(folder: Path, recursive: bool = False) -> list[str]:
    """Sorted image files of ``folder`` (extension test is case-insensitive)."""
    if recursive:
        found = [os.path.join(d, f) for d, _, files in os.walk(folder, followlinks=True) for f in files]
    else:
        found = [e.path for e in os.scandir(folder) if e.is_file()]
    return sorted(p for p in found if p.lower().endswith(IMAGE_EXTENSIONS))


def subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _identity(x):
    return x


class RawDataset(Dataset):
    """What the readers share: the item index over ``sources`` (two items per source with
    ``flip="both"``: the original, then its horizontal flip keyed ``<key>_flip``; with
    ``flip="random"`` one item carrying both, ``image`` and ``image_flip``, which prepare stores in
    one sample so training picks one per step), error naming, and ``iter_items()``. A subclass
    supplies ``load(source) -> Tensor`` and may note ``self.notes["padded"] = True`` there (the
    item then says so, and prepare counts it)."""

    name = "raw"

    def __init__(self, sources: list[Source], classes: list[str], flip: str = "none", skip_bad: bool = False):
        if flip not in FLIPS:
            raise ValueError(f"{self.name}: flip must be one of {FLIPS}, got {flip!r}")
        if len({s.key for s in sources}) < len(sources):
            seen = {}
            for s in sources:
                if s.key in seen:
                    raise ValueError(f"{self.name}: {seen[s.key]} and {s.path} share the key {s.key!r} "
                                     f"(keys name shard entries and must be unique): rename one")
                seen[s.key] = s.path
        self.sources, self.classes, self.flip, self.skip_bad = sources, list(classes), flip, skip_bad
        self.copies = 2 if flip == "both" else 1
        suffixes = ("", FLIP_SUFFIX)[:self.copies]
        self.labels = [s.label for s in sources for _ in suffixes]
        self.keys = [s.key + x for s in sources for x in suffixes]
        self.skipped = 0
        self.notes: dict = {}

    def load(self, source: Source) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def decode(self, j: int) -> torch.Tensor:
        source = self.sources[j]
        self.notes = {}
        try:
            return self.load(source)
        except Exception as e:
            raise ValueError(f"{self.name}: cannot read {source.path}: {type(e).__name__}: {e}") from e

    def items_of(self, j: int, x: torch.Tensor) -> list[dict]:
        s, notes = self.sources[j], dict(self.notes)
        out = [{"image": x, "label": s.label, "key": s.key, **notes}]
        if self.flip == "random":
            out[0]["image_flip"] = x.flip(-1)
        if self.copies == 2:
            out.append({"image": x.flip(-1), "label": s.label, "key": s.key + FLIP_SUFFIX, **notes})
        return out

    def __getitem__(self, i: int) -> dict:
        j, flipped = divmod(i, self.copies)
        return self.items_of(j, self.decode(j))[flipped]

    def source_items(self, j: int) -> list[dict] | None:
        """The items of source ``j`` (decoded once), or None for an unreadable file under skip_bad."""
        try:
            return self.items_of(j, self.decode(j))
        except ValueError as e:
            if not self.skip_bad:
                raise
            log.warning("%s; skipped", e)
            return None

    def iter_items(self, num_workers: int = 0) -> Iterator[dict]:
        """Every item in index order, each file decoded once (both flips from one decode); with
        ``skip_bad`` the items of unreadable files are left out and counted in ``.skipped``."""
        self.skipped = 0
        loader = DataLoader(_SourceView(self), batch_size=None, shuffle=False, num_workers=num_workers,
                            collate_fn=_identity)
        for items in loader:
            if items is None:
                self.skipped += 1
                continue
            yield from items
        if self.skipped:
            log.warning("%s: skipped %d unreadable file(s) of %d", self.name, self.skipped, len(self.sources))


class _SourceView(Dataset):
    """One index per source file, so DataLoader workers decode each file once."""

    def __init__(self, ds: RawDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds.sources)

    def __getitem__(self, j: int):
        return self.ds.source_items(j)


def positive_int(name: str, key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: {key} must be an integer >= 1, got {value!r}")
    return value


class RawImages(RawDataset):
    """Still images, decoded by content and ADM-cropped to ``resolution``."""

    crop = "adm_center_crop"

    def __init__(self, sources, classes, resolution: int, flip: str, skip_bad: bool):
        self.resolution = positive_int(self.name, "resolution", resolution)
        super().__init__(sources, classes, flip, skip_bad)

    def load(self, source: Source) -> torch.Tensor:
        return decode_image(source.path, self.resolution)
