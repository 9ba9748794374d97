"""Fashion-MNIST from its IDX files (Debian's ``dataset-fashion-mnist`` installs them under
/usr/share/datasets/fashion-mnist): 70k 28×28 gray images of 10 clothing classes.

``FashionMNISTRaw`` is a raw reader like those of ``elt.data.raw``: prepare.py encodes it into
shards with the VQ tokenizer / KL autoencoder that ``elt.experiments.stage_one`` trains, and evaluation reads
its real images. Splits: ``train`` is the 60k training file minus ``val_per_class`` images per
class (drawn with ``split_seed``), ``val`` those held-out images (the split to tune on), ``test``
the 10k t10k file (the split the mini-paper reports on).
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from elt.data.splits import held_out_mask

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
HOW_TO_GET = ("install Debian's package dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist) or put "
              "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
              "t10k-labels-idx1-ubyte.gz into one folder and set data.raw_root to it")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {"train": "train", "val": "train", "test": "t10k"}
IMAGES_MAGIC, LABELS_MAGIC = 0x0803, 0x0801


def find_idx(root: Path, stem: str) -> Path:
    """``<stem>`` or ``<stem>.gz`` under root."""
    for p in (root / f"{stem}.gz", root / stem):
        if p.is_file():
            return p
    raise FileNotFoundError(f"FashionMNIST: {root / (stem + '.gz')} not found; {HOW_TO_GET}")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX array (uint8): big-endian magic (0x08 = unsigned byte, then the rank), the dims, the bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"FashionMNIST: cannot read {path}: {e}") from None
    if len(data) < 4 or struct.unpack(">I", data[:4])[0] != magic:
        raise ValueError(f"FashionMNIST: {path} is not an IDX file of rank {magic & 0xFF} (magic {magic:#06x})")
    rank = magic & 0xFF
    dims = struct.unpack(f">{rank}I", data[4:4 + 4 * rank])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"FashionMNIST: {path} holds {body.size} bytes, its header says {dims}")
    return body.reshape(dims)


class FashionMNISTRaw(Dataset):
    """One split as ``{"image": float32 [1, 28, 28] in [0, 1], "label": int, "key": str}``; all of
    it in memory (47 MB for the training file), so reads are free and there is nothing to skip."""

    name = "FashionMNIST"
    crop = "none"

    def __init__(self, raw_root: str | Path = DEFAULT_ROOT, split: str = "train", val_per_class: int = 500,
                 split_seed: int = 0, limit: int | None = None, skip_bad: bool = False, flip: str = "none"):
        if split not in FILES:
            raise ValueError(f"FashionMNIST: split must be one of {sorted(FILES)}, got {split!r}")
        if flip != "none":
            raise ValueError(f"FashionMNIST: flip={flip!r} is not offered (a flipped shoe is another shoe)")
        root = Path(raw_root)
        if not root.is_dir():
            raise FileNotFoundError(f"FashionMNIST: data.raw_root not found: {root}; {HOW_TO_GET}")
        stem = FILES[split]
        images = read_idx(find_idx(root, f"{stem}-images-idx3-ubyte"), IMAGES_MAGIC)
        labels = read_idx(find_idx(root, f"{stem}-labels-idx1-ubyte"), LABELS_MAGIC).astype(np.int64)
        if len(images) != len(labels):
            raise ValueError(f"FashionMNIST: {root}: {len(images)} {stem} images but {len(labels)} labels")
        if labels.size and labels.max() >= len(CLASSES):
            raise ValueError(f"FashionMNIST: {root}: label {labels.max()} outside 0..{len(CLASSES) - 1}")
        index = np.arange(len(labels))
        if split != "test" and val_per_class:
            mask = held_out_mask(labels, len(CLASSES), int(val_per_class), int(split_seed), self.name)
            index = index[mask if split == "val" else ~mask]
        elif split == "val":
            raise ValueError("FashionMNIST: split=val needs val_per_class > 0 (it is held out of the training file)")
        if limit is not None:  # the first items in file order: a quick miniature of the split
            index = index[:int(limit)]
        self.images, self.split, self.classes = images, split, list(CLASSES)
        self.index = index
        self.labels = labels[index].tolist()
        self.keys = [f"{stem}_{i:05d}" for i in index]
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        j = self.index[i]
        image = torch.from_numpy(self.images[j].astype(np.float32) / 255.0).unsqueeze(0)
        return {"image": image, "label": self.labels[i], "key": self.keys[i]}

    def iter_items(self, num_workers: int = 0):
        for i in range(len(self)):
            yield self[i]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as ([n, 1, 28, 28] float in [0, 1], [n] labels), for stage-one training."""
        x = torch.from_numpy(self.images[self.index].astype(np.float32) / 255.0).unsqueeze(1)
        return x, torch.tensor(self.labels, dtype=torch.long)
