"""Readers for the raw layouts researchers download: ILSVRC-2012 (class folders or the flat val
folder with ``LOC_val_solution.csv``), any class-folder image directory, and UCF-101 (the AVIs
with ``ucfTrainTestlist/``). ``prepare.py`` reads these once to write shards; nothing trains on
them directly.

Every reader is a map-style ``Dataset`` of ``{"image": float32 in [0, 1], "label": int, "key": str}``
(images ``[3, R, R]``, videos ``[3, T, R, R]``) and lists ``.labels``, ``.keys`` and ``.classes``
from file names and list files alone, without decoding anything, so class counts and shard plans
are known up front.

Unreadable files: ``ds[i]`` always raises ``ValueError`` naming the file (a map-style dataset
cannot drop an index). Dropping is done by ``iter_items()``, the streaming read prepare uses:
with ``skip_bad=True`` it leaves out the items of an unreadable file, counts the file in
``.skipped`` (with UCF-101's ``clip="all"``: each clip of it) and logs the count at the end;
with ``skip_bad=False`` it raises like ``ds[i]``. ``.labels`` / ``.keys`` list every file found,
readable or not, since finding out would mean decoding.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
FLIPS = ("none", "both")
FLIP_SUFFIX = "_flip"
IMAGENET_HOW_TO_GET = ("download ILSVRC-2012 (image-net.org, or Kaggle's imagenet-object-localization-challenge) "
                       "and set data.raw_root to the folder holding train/ and val/")
UCF101_HOW_TO_GET = ("download UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip from "
                     "https://www.crcv.ucf.edu/data/UCF101.php and unpack both into data.raw_root "
                     "(it then holds UCF-101/ and ucfTrainTestlist/)")


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


def decode_image(path: str, resolution: int) -> torch.Tensor:
    """Decode by content (ImageNet holds CMYK and grayscale JPEGs and a PNG named .JPEG), to RGB,
    ADM-crop: float32 ``[3, R, R]`` in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
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
    ``flip="both"``: the original, then its horizontal flip keyed ``<key>_flip``), error naming,
    and ``iter_items()``. A subclass supplies ``load(source) -> Tensor``."""

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

    def load(self, source: Source) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def decode(self, j: int) -> torch.Tensor:
        source = self.sources[j]
        try:
            return self.load(source)
        except Exception as e:
            raise ValueError(f"{self.name}: cannot read {source.path}: {type(e).__name__}: {e}") from e

    def items_of(self, j: int, x: torch.Tensor) -> list[dict]:
        s = self.sources[j]
        out = [{"image": x, "label": s.label, "key": s.key}]
        if self.copies == 2:
            out.append({"image": x.flip(-1), "label": s.label, "key": s.key + FLIP_SUFFIX})
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


def check_resolution(name: str, resolution) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"{name}: resolution must be an integer >= 1, got {resolution!r}")
    return resolution


class RawImages(RawDataset):
    def __init__(self, sources, classes, resolution: int, flip: str, skip_bad: bool):
        self.resolution = check_resolution(self.name, resolution)
        super().__init__(sources, classes, flip, skip_bad)

    def load(self, source: Source) -> torch.Tensor:
        return decode_image(source.path, self.resolution)


# --------------------------------------------------------------------------------- ImageNet

def imagenet_data_dir(raw_root: Path) -> Path:
    """The folder holding train/ and val/: ``raw_root`` itself, or Kaggle's ILSVRC/Data/CLS-LOC."""
    for d in (raw_root, raw_root / "ILSVRC" / "Data" / "CLS-LOC"):
        if (d / "train").is_dir() or (d / "val").is_dir():
            return d
    raise FileNotFoundError(f"ImageNet: no train/ or val/ folder under {raw_root}; {IMAGENET_HOW_TO_GET}")


def read_val_solution(path: Path) -> dict[str, str]:
    """LOC_val_solution.csv: ImageId -> wnid (the first token of PredictionString)."""
    with open(path, newline="") as f:
        rows = csv.DictReader(f)
        if not rows.fieldnames or not {"ImageId", "PredictionString"} <= set(rows.fieldnames):
            raise ValueError(f"ImageNet: {path} lacks the columns ImageId,PredictionString")
        return {r["ImageId"]: r["PredictionString"].split()[0] for r in rows if r["PredictionString"].strip()}


class ImageNetRaw(RawImages):
    """ILSVRC-2012: ``train/<wnid>/*.JPEG``; ``val/<wnid>/*.JPEG`` or the flat ``val/*.JPEG`` with
    ``LOC_val_solution.csv`` (in raw_root or beside val/). Class index = position in the sorted
    train wnids (the standard 0..999). Items are sorted by key (the file stem), so both val
    layouts give the same list."""

    name = "ImageNet"

    def __init__(self, raw_root: str | Path, split: str = "train", resolution: int = 256, flip: str = "none",
                 skip_bad: bool = False):
        if split not in ("train", "val"):
            raise ValueError(f"ImageNet: split must be train or val, got {split!r}")
        raw_root = Path(raw_root)
        if not raw_root.is_dir():
            raise FileNotFoundError(f"ImageNet: data.raw_root not found: {raw_root}; {IMAGENET_HOW_TO_GET}")
        self.raw_root, self.split = raw_root, split
        data = imagenet_data_dir(raw_root)
        folder = data / split
        if not folder.is_dir():
            raise FileNotFoundError(f"ImageNet: {folder} not found; {IMAGENET_HOW_TO_GET}")
        solution = self.val_solution(data) if split == "val" and not subfolders(folder) else None
        wnids = self.find_wnids(data, solution)
        index = {w: i for i, w in enumerate(wnids)}
        if solution is None:
            pairs = []
            for w in subfolders(folder):
                if w not in index:
                    raise ValueError(f"ImageNet: {folder / w} is not a class of {data / 'train'}")
                pairs += [(p, index[w]) for p in list_images(folder / w)]
        else:
            pairs = []
            for p in list_images(folder):
                stem = Path(p).stem
                if stem not in solution:
                    raise ValueError(f"ImageNet: {p} has no row in {solution.path}")
                if solution[stem] not in index:
                    raise ValueError(f"ImageNet: {p}: wnid {solution[stem]} in {solution.path} is not a training class")
                pairs.append((p, index[solution[stem]]))
        if not pairs:
            raise FileNotFoundError(f"ImageNet: no images under {folder}; {IMAGENET_HOW_TO_GET}")
        sources = sorted((Source(p, y, Path(p).stem) for p, y in pairs), key=lambda s: s.key)
        super().__init__(sources, wnids, resolution, flip, skip_bad)

    def val_solution(self, data: Path) -> "_Solution":
        folders = [data, *data.parents]
        for d in folders[:folders.index(self.raw_root) + 1]:  # Kaggle keeps it in raw_root, above CLS-LOC
            path = d / "LOC_val_solution.csv"
            if path.is_file():
                return _Solution(read_val_solution(path), path)
        raise FileNotFoundError(f"ImageNet: {data / 'val'} is flat (no wnid folders) and no LOC_val_solution.csv "
                                f"is in {data} or above it up to {self.raw_root}; get it from Kaggle's "
                                f"imagenet-object-localization-challenge, or sort val/ into wnid folders")

    @staticmethod
    def find_wnids(data: Path, solution: "_Solution | None") -> list[str]:
        """Sorted train wnids; without train/, the val wnid folders or the csv's wnids (all 1000
        classes occur in val, so the order is the same)."""
        for folder in (data / "train", data / "val"):
            if folder.is_dir() and subfolders(folder):
                return subfolders(folder)
        if solution is not None:
            return sorted(set(solution.values()))
        raise FileNotFoundError(f"ImageNet: no wnid folders in {data / 'train'}; {IMAGENET_HOW_TO_GET}")


class _Solution(dict):
    """The val csv's mapping, remembering its path for error messages."""

    def __init__(self, mapping: dict, path: Path):
        super().__init__(mapping)
        self.path = path


# --------------------------------------------------------------------------------- image folders

class ImageFolderRaw(RawImages):
    """Any class-folder directory (``<class>/**/*.{jpg,jpeg,png,webp,bmp}``, any case); classes =
    sorted folder names. ``split`` reads ``root/<split>/`` (its class list taken from
    ``root/train/`` when that exists, so indices agree across splits). A folder without split
    folders can still give ``split="train"|"val"``: ``val_per_class`` images of each class, drawn
    with ``split_seed``, form val and the rest train."""

    name = "ImageFolder"

    def __init__(self, raw_root: str | Path, split: str | None = None, resolution: int = 256, flip: str = "none",
                 skip_bad: bool = False, val_per_class: int = 0, split_seed: int = 0):
        root = Path(raw_root)  # named like every reader's, so relocate_data moves it with the others
        if not root.is_dir():
            raise FileNotFoundError(f"ImageFolder: data.raw_root not found: {root}")
        self.root, self.split = root, split
        if split is not None and (root / split).is_dir():
            if val_per_class:
                raise ValueError(f"ImageFolder: {root} has split folders; val_per_class applies only to a "
                                 f"folder without them")
            folder = root / split
            classes = subfolders(root / "train") if (root / "train").is_dir() else subfolders(folder)
            unknown = sorted(set(subfolders(folder)) - set(classes))
            if unknown:
                raise ValueError(f"ImageFolder: {folder / unknown[0]} is not a class of {root / 'train'}")
            per_class = {c: list_images(folder / c, recursive=True) for c in subfolders(folder)}
        elif split is None or (val_per_class > 0 and split in ("train", "val")):
            if split is None and val_per_class:
                raise ValueError("ImageFolder: val_per_class needs split=train or split=val")
            folder, classes = root, subfolders(root)
            per_class = {c: list_images(root / c, recursive=True) for c in classes}
            if split is not None:
                per_class = {c: self.held_out(c, ps, ci, split, val_per_class, split_seed)
                             for ci, (c, ps) in enumerate(per_class.items())}
        else:
            raise FileNotFoundError(f"ImageFolder: {root / split} not found (set data.val_per_class > 0 to hold "
                                    f"out a val split from a folder without split folders)")
        index = {c: i for i, c in enumerate(classes)}
        sources = [Source(p, index[c], Path(os.path.relpath(p, folder)).with_suffix("").as_posix())
                   for c, ps in per_class.items() for p in ps]
        if not sources:
            raise FileNotFoundError(f"ImageFolder: no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders "
                                    f"of {folder}")
        super().__init__(sources, classes, resolution, flip, skip_bad)

    @staticmethod
    def held_out(name: str, paths: list[str], class_index: int, split: str, val_per_class: int, seed: int):
        if len(paths) <= val_per_class:
            raise ValueError(f"ImageFolder: class {name!r} has {len(paths)} images; val_per_class={val_per_class} "
                             f"would leave none to train on")
        pick = np.random.default_rng([seed, class_index]).permutation(len(paths))[:val_per_class]
        is_val = np.zeros(len(paths), dtype=bool)
        is_val[pick] = True
        return [p for p, v in zip(paths, is_val) if v == (split == "val")]


# --------------------------------------------------------------------------------- UCF-101

def read_class_ind(path: Path) -> list[str]:
    """classInd.txt: "1 ApplyEyeMakeup" lines, 1-based; returns names in index order."""
    if not path.is_file():
        raise FileNotFoundError(f"UCF-101: {path} not found; {UCF101_HOW_TO_GET}")
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    try:
        named = {int(i): name for i, name in rows}
    except ValueError:
        raise ValueError(f"UCF-101: {path}: expected lines '<index> <ClassName>'") from None
    if sorted(named) != list(range(1, len(named) + 1)):
        raise ValueError(f"UCF-101: {path}: class indices must be 1..{len(named)}")
    return [named[i] for i in range(1, len(named) + 1)]


def count_frames(path: str) -> int:
    """Frames of a video from its header (demuxed packets if the header has no count); no decode."""
    import av

    with av.open(path) as c:
        stream = c.streams.video[0]
        return stream.frames or sum(1 for p in c.demux(stream) if p.size)


class UCF101Raw(RawDataset):
    """UCF-101: ``UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` with ``ucfTrainTestlist/``; labels are
    classInd's (0-based). ``split="all"`` is every video of classInd's classes (13,320: the
    protocol of class-conditional video generation, MAGVIT/TATS); ``train``/``test`` read fold
    ``fold``'s lists. A clip is ``frames`` frames ``stride`` apart, taken from the video's centre,
    its start, or (``clip="all"``) every non-overlapping clip of the video (this opens each
    container's header once to count frames). A video shorter than the clip's span is padded by
    repeating its last frame, so every video keeps its item. Frames: PyAV decode, shorter side
    to ``resolution`` (bilinear, antialiased), centre crop."""

    name = "UCF-101"
    clips = ("center", "start", "all")

    def __init__(self, raw_root: str | Path, split: str = "all", fold: int = 1, frames: int = 16, stride: int = 1,
                 resolution: int = 128, clip: str = "center", flip: str = "none", skip_bad: bool = False):
        if split not in ("train", "test", "all"):
            raise ValueError(f"UCF-101: split must be train, test or all, got {split!r}")
        if fold not in (1, 2, 3):
            raise ValueError(f"UCF-101: fold must be 1, 2 or 3, got {fold!r}")
        if clip not in self.clips:
            raise ValueError(f"UCF-101: clip must be one of {self.clips}, got {clip!r}")
        for key, value in (("frames", frames), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UCF-101: {key} must be an integer >= 1, got {value!r}")
        raw_root = Path(raw_root)
        if not raw_root.is_dir():
            raise FileNotFoundError(f"UCF-101: data.raw_root not found: {raw_root}; {UCF101_HOW_TO_GET}")
        videos, lists = raw_root / "UCF-101", raw_root / "ucfTrainTestlist"
        if not videos.is_dir():
            raise FileNotFoundError(f"UCF-101: {videos} not found; {UCF101_HOW_TO_GET}")
        self.raw_root, self.split, self.fold, self.clip = raw_root, split, fold, clip
        self.frames, self.stride, self.resolution = frames, stride, check_resolution(self.name, resolution)
        self.span = (frames - 1) * stride + 1
        classes = read_class_ind(lists / "classInd.txt")
        index = {c.lower(): i for i, c in enumerate(classes)}  # list files' folder part, any case
        if split == "all":
            pairs = []
            for i, c in enumerate(classes):
                if not (videos / c).is_dir():
                    raise FileNotFoundError(f"UCF-101: class folder {videos / c} (from classInd.txt) not found")
                pairs += [(str(videos / c / f), i) for f in sorted(os.listdir(videos / c)) if f.lower().endswith(".avi")]
        else:
            pairs = self.read_split_list(lists / f"{split}list{fold:02d}.txt", videos, index)
        if not pairs:
            raise FileNotFoundError(f"UCF-101: no .avi videos found for split={split} under {videos}")
        sources = []
        for path, y in pairs:
            key = Path(path).stem
            if clip == "all":
                sources += [Source(path, y, f"{key}_t{s:04d}", s) for s in self.clip_starts(path)]
            else:
                sources.append(Source(path, y, key, -1 if clip == "center" else 0))  # centre: known at decode
        super().__init__(sources, classes, flip, skip_bad)

    @staticmethod
    def read_split_list(path: Path, videos: Path, index: dict[str, int]) -> list[tuple[str, int]]:
        """trainlist0K.txt ("Class/v_...avi i") / testlist0K.txt ("Class/v_...avi"): the label is
        the folder's classInd index (checked against the number where the line has one)."""
        if not path.is_file():
            raise FileNotFoundError(f"UCF-101: {path} not found; {UCF101_HOW_TO_GET}")
        pairs = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            name = parts[0].replace("\\", "/")
            folder = name.split("/")[0].lower()
            if folder not in index:
                raise ValueError(f"UCF-101: {path}:{n}: class {name.split('/')[0]!r} is not in classInd.txt")
            y = index[folder]
            if len(parts) > 1 and parts[1] != str(y + 1):
                raise ValueError(f"UCF-101: {path}:{n}: label {parts[1]} disagrees with classInd.txt ({y + 1})")
            pairs.append((str(videos / name), y))
        return pairs

    def clip_starts(self, path: str) -> list[int]:
        """Starts of the non-overlapping clips; an unreadable header gives one clip at 0, so the
        file fails (or is skipped) at decode like any other."""
        try:
            n = count_frames(path)
        except Exception:
            return [0]
        return list(range(0, max(n - self.span, 0) + 1, self.span))

    def load(self, source: Source) -> torch.Tensor:
        import av

        with av.open(source.path) as c:
            stream = c.streams.video[0]
            start = source.start
            if start < 0:  # centre clip: the header's frame count places it
                n = stream.frames or count_frames(source.path)
                start = max(n - self.span, 0) // 2
            wanted, got, t, frame = range(start, start + self.span, self.stride), {}, -1, None
            for t, frame in enumerate(c.decode(stream)):
                if t in wanted:
                    got[t] = frame.to_ndarray(format="rgb24")
                if t >= wanted[-1]:
                    break
        if frame is None or t < start:
            raise ValueError(f"no decodable frames at or after frame {start} (decoded {t + 1})")
        if t < wanted[-1]:  # short video: its last frame stands in for the frames past the end
            log.debug("UCF-101: %s has %d frames, fewer than a clip of %d frames at stride %d: last frame repeated",
                      source.path, t + 1, self.frames, self.stride)
            got[t] = frame.to_ndarray(format="rgb24")
        x = torch.from_numpy(np.stack([got[min(i, t)] for i in wanted])).permute(0, 3, 1, 2).float().div_(255)
        return resize_center_crop(x, self.resolution).permute(1, 0, 2, 3).contiguous()  # [3, T, R, R]


def resize_center_crop(frames: torch.Tensor, resolution: int) -> torch.Tensor:
    """[T, C, H, W] float -> shorter side ``resolution`` (bilinear, antialiased) -> centre crop."""
    h, w = frames.shape[-2:]
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    if size != (h, w):
        frames = torch.nn.functional.interpolate(frames, size=size, mode="bilinear", antialias=True,
                                                 align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return frames[..., top:top + resolution, left:left + resolution].clamp_(0, 1)
