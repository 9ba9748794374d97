"""Miniature datasets in the real raw layouts (ILSVRC-2012, class folders, UCF-101), written into a
tmp dir, so reader / prepare / shard tests run on the exact file structure researchers have
without downloading anything.

Content is chosen so a test can check what it decoded: every image is a solid colour,
``class_color(c)`` of its class's index ``c`` in the reader's class order (sorted wnids / folder
names); every UCF-101 frame is black with a white square whose centre is ``square_center(t, ...)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

PALETTE = [(220, 40, 40), (40, 200, 60), (50, 60, 220), (230, 210, 40), (200, 60, 210), (40, 200, 210),
           (250, 140, 20), (120, 120, 120)]
IMAGENET_QUIRKS = {"cmyk": "CMYK JPEG", "gray": "grayscale JPEG", "png": "PNG bytes under a .JPEG name"}
FOLDER_EXTENSIONS = (".jpg", ".JPEG", ".png", ".webp", ".BMP")  # cycled: readers must match any case
UCF_CLASSES = ("JumpingJack", "JumpRope", "HandstandPushups", "ApplyEyeMakeup", "YoYo")
UCF_FILE_NAMES = {"HandstandPushups": "HandStandPushups"}  # the real set's folder/file spelling quirk
SQUARE = 8  # side of the moving square in the UCF-101 miniature


def class_color(c: int) -> tuple[int, int, int]:
    """The solid RGB colour of class index ``c`` (distinct for c < 8)."""
    return PALETTE[c % len(PALETTE)]


def nearest_class(image, classes: int) -> int:
    """The class whose colour is nearest to a decoded ``[3, H, W]`` image's mean colour."""
    mean = np.asarray(image, dtype=np.float64).reshape(3, -1).mean(1) * 255
    return int(np.argmin([np.abs(mean - class_color(c)).sum() for c in range(classes)]))


def solid(color, size=(40, 32)) -> Image.Image:
    return Image.new("RGB", size, color)


def imagenet_wnids(n: int) -> list[str]:
    """``n`` wnid-like names, sorted (the order a reader must index them in)."""
    return sorted(f"n{(7919 * k + 1440764) % 10 ** 8:08d}" for k in range(n))


def make_imagenet(root, wnids: int = 3, per_class: int = 4, val_per_class: int = 2, val_layout: str = "folders",
                  size=(40, 32), quirks: bool = False, corrupt: bool = False) -> Path:
    """ILSVRC-2012 layout under ``root``; returns ``root``.

    ``train/<wnid>/<wnid>_<i>.JPEG`` (``per_class`` each) and ``val_per_class`` val images per class
    named ``ILSVRC2012_val_<8 digits>.JPEG`` with the classes interleaved, either in
    ``val/<wnid>/`` (``val_layout="folders"``) or flat in ``val/`` with ``root/LOC_val_solution.csv``
    (``"flat"``; rows shuffled, several boxes per row as in the real file). Images are solid
    ``class_color`` of the wnid's sorted index, ``size`` = (width, height). Folders are created
    in reverse order, so listing order is not sorted order. ``quirks`` adds to the first class
    ``<wnid>_{cmyk,gray,png}.JPEG`` (see ``IMAGENET_QUIRKS``); ``corrupt`` adds random bytes as
    ``<last wnid>_corrupt.JPEG``."""
    if val_layout not in ("folders", "flat"):
        raise ValueError(f"val_layout must be folders or flat, got {val_layout!r}")
    root, names = Path(root), imagenet_wnids(wnids)
    for c in reversed(range(wnids)):
        folder = root / "train" / names[c]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            solid(class_color(c), size).save(folder / f"{names[c]}_{i + 1}.JPEG", quality=95)
    if quirks:
        folder, color = root / "train" / names[0], class_color(0)
        solid(color, size).convert("CMYK").save(folder / f"{names[0]}_cmyk.JPEG", quality=95)
        solid(color, size).convert("L").save(folder / f"{names[0]}_gray.JPEG", quality=95)
        solid(color, size).save(folder / f"{names[0]}_png.JPEG", format="PNG")
    if corrupt:
        rng = np.random.default_rng(0)
        (root / "train" / names[-1] / f"{names[-1]}_corrupt.JPEG").write_bytes(rng.bytes(2000))
    val_classes = [c for _ in range(val_per_class) for c in range(wnids)]
    rows = []
    for n, c in enumerate(val_classes, 1):
        image_id = f"ILSVRC2012_val_{n:08d}"
        folder = root / "val" / (names[c] if val_layout == "folders" else "")
        folder.mkdir(parents=True, exist_ok=True)
        solid(class_color(c), size).save(folder / f"{image_id}.JPEG", quality=95)
        rows.append(f"{image_id},{names[c]} 1 2 30 25 {names[c]} 4 3 20 21 ")
    if val_layout == "flat":
        order = np.random.default_rng(1).permutation(len(rows))
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows[i] for i in order) + "\n")
    return root


def make_image_folder(root, classes: int | Sequence[str] = 3, per_class: int = 3, splits: Sequence[str] = (),
                      size=(40, 32)) -> Path:
    """Class folders of solid ``class_color`` images (index = sorted name order); returns ``root``.

    ``classes``: a count (names ``class_a``, ``class_b``, ...) or the names. Without ``splits``
    the folders are ``root/<class>/``; with e.g. ``("train", "val")`` they are
    ``root/<split>/<class>/``, ``per_class`` images in each. Extensions cycle through
    ``FOLDER_EXTENSIONS`` (mixed case, jpg/png/webp/bmp) and each class folder also holds a
    ``notes.txt`` that readers must ignore."""
    root = Path(root)
    names = [f"class_{chr(97 + i)}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    index = {name: i for i, name in enumerate(sorted(names))}
    for split in splits or ("",):
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "notes.txt").write_text("not an image\n")
            for i in range(per_class):
                ext = FOLDER_EXTENSIONS[i % len(FOLDER_EXTENSIONS)]
                solid(class_color(index[name]), size).save(folder / f"img{i:03d}{ext}")
    return root


def ucf_classes(n: int) -> list[str]:
    """Class names for a UCF-101 miniature: real names first (incl. JumpingJack / JumpRope, whose
    classInd order differs from Python's case-sensitive sort), then ``Class<i>``."""
    return list(UCF_CLASSES[:n]) + [f"Class{i:03d}" for i in range(len(UCF_CLASSES), n)]


def ucf_class_ind(n: int) -> list[str]:
    """The classInd.txt order of ``ucf_classes(n)`` (case-insensitive, as in the real file)."""
    return sorted(ucf_classes(n), key=str.lower)


def ucf_video_name(cls: str, group: int, clip: int) -> str:
    return f"v_{UCF_FILE_NAMES.get(cls, cls)}_g{group:02d}_c{clip:02d}"


def square_center(t: int, frames: int, size=(40, 32)) -> tuple[float, float]:
    """(x, y) pixel centre of the white square in frame ``t`` of a ``frames``-frame miniature video
    of ``size`` = (width, height): it moves right one pixel per frame, centred on the middle frame."""
    width, height = size
    x0 = min(max(width // 2 - SQUARE // 2 + t - frames // 2, 0), width - SQUARE)
    y0 = (height - SQUARE) // 2
    return x0 + (SQUARE - 1) / 2, y0 + (SQUARE - 1) / 2


def write_video(path, frames: int, size=(40, 32), fps: int = 25) -> None:
    """An MPEG-4 Part 2 AVI (the real set's codec family) of the moving square."""
    import av

    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = width, height, "yuv420p", 4_000_000
        for t in range(frames):
            a = np.zeros((height, width, 3), np.uint8)
            x, y = (int(v - (SQUARE - 1) / 2) for v in square_center(t, frames, size))
            a[y:y + SQUARE, x:x + SQUARE] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_ucf101(root, classes: int = 2, groups: int = 2, clips: int = 1, frames: int = 20, size=(40, 32)) -> Path:
    """UCF-101 layout under ``root``; returns ``root``.

    ``UCF-101/<Class>/v_<Class>_gGG_cCC.avi`` (``groups`` x ``clips`` videos per class, ``frames``
    frames of ``size`` = (width, height), the square of ``square_center``) and
    ``ucfTrainTestlist/``: ``classInd.txt`` ("i Class", 1-based, case-insensitive order) and,
    for folds 1-3, ``trainlist0K.txt`` ("Class/v_...avi i") / ``testlist0K.txt`` ("Class/v_...avi")
    with group ``((K-1) % groups) + 1`` as the test group. CRLF line ends, as in the real files."""
    root = Path(root)
    names, lists = ucf_class_ind(classes), root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_bytes("".join(f"{i} {c}\r\n" for i, c in enumerate(names, 1)).encode())
    for cls in names:
        (root / "UCF-101" / cls).mkdir(parents=True, exist_ok=True)
        for g in range(1, groups + 1):
            for k in range(1, clips + 1):
                write_video(root / "UCF-101" / cls / f"{ucf_video_name(cls, g, k)}.avi", frames, size)
    for fold in (1, 2, 3):
        test_group = (fold - 1) % groups + 1
        train, test = [], []
        for i, cls in enumerate(names, 1):
            for g in range(1, groups + 1):
                for k in range(1, clips + 1):
                    entry = f"{cls}/{ucf_video_name(cls, g, k)}.avi"
                    if g == test_group:
                        test.append(entry)
                    else:
                        train.append(f"{entry} {i}")
        (lists / f"trainlist{fold:02d}.txt").write_bytes("".join(f"{x}\r\n" for x in train).encode())
        (lists / f"testlist{fold:02d}.txt").write_bytes("".join(f"{x}\r\n" for x in test).encode())
    return root



# ---------------------------------------------------------------------------------- Fashion-MNIST
def fashion_pattern(c: int, i: int, size: int = 28) -> np.ndarray:
    """Image ``i`` of class ``c``: a bright bar whose row is set by the class (rows 2 + 2c .. 4 + 2c)
    over a faint per-item gradient, so a reader test can recover the class from the pixels."""
    img = np.full((size, size), (i * 7) % 40, dtype=np.uint8)
    img[2 + 2 * c:4 + 2 * c, 4:size - 4] = 255
    return img


def bar_class(image) -> int:
    """The class ``fashion_pattern`` drew into a decoded ``[1, 28, 28]`` image (its brightest rows)."""
    rows = np.asarray(image, dtype=np.float64).reshape(28, 28).mean(1)
    return int((np.argmax(rows) - 2) // 2)


def write_idx(path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (magic 0x08, rank), gzip-compressed like the distributed files."""
    import gzip
    import struct

    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def make_fashion_mnist(root, train_per_class: int = 6, test_per_class: int = 2, classes: int = 10) -> Path:
    """The four Fashion-MNIST IDX .gz files under ``root`` (as Debian's dataset-fashion-mnist installs
    them), classes interleaved in file order; returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stem, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.array([c for _ in range(per_class) for c in range(classes)], dtype=np.uint8)
        images = np.stack([fashion_pattern(int(c), i) for i, c in enumerate(labels)])
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", labels)
    return root


def save_fashion_stand_ins(root) -> tuple[Path, Path]:
    """Untrained stage-one VQModel and AutoencoderKL of the fashion_mnist data config's shapes
    (7×7 tokens from 64 codes, 4×7×7 latents), saved as diffusers directories: what a config test
    needs where ``python -m elt.experiments.stage_one`` has not run."""
    from elt.experiments import stage_one

    out = []
    for kind in stage_one.KINDS:
        path = Path(root) / f"fashion_{kind}"
        stage_one.build(kind, stage_one.DEFAULTS[kind]).save_pretrained(str(path))
        out.append(path)
    return out[0], out[1]
