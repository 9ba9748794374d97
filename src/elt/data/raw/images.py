"""Still-image layouts: ILSVRC-2012 (class folders or the flat val folder with
``LOC_val_solution.csv``) and any class-folder image directory."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from elt.data.raw.base import IMAGE_EXTENSIONS, RawImages, Source, list_images, subfolders

IMAGENET_HOW_TO_GET = ("download ILSVRC-2012 (image-net.org, or Kaggle's imagenet-object-localization-challenge) "
                       "and set data.raw_root to the folder holding train/ and val/")


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
