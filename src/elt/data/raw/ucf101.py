"""UCF-101: the AVIs with ``ucfTrainTestlist/``, read as fixed-length clips."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from elt.data.raw.base import RawDataset, Source, positive_int

log = logging.getLogger(__name__)

UCF101_HOW_TO_GET = ("download UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip from "
                     "https://www.crcv.ucf.edu/data/UCF101.php and unpack both into data.raw_root "
                     "(it then holds UCF-101/ and ucfTrainTestlist/)")


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
    repeating its last frame, so every video keeps its item (logged, and counted by prepare). Videos
    named in the fold's lists but missing on disk are left out, logged and listed in ``.missing``
    (prepare records their number in the index). Frames: PyAV decode, shorter side to
    ``resolution`` (bilinear, antialiased), centre crop."""

    name = "UCF-101"
    crop = "resize_center_crop"
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
            positive_int(self.name, key, value)
        raw_root = Path(raw_root)
        if not raw_root.is_dir():
            raise FileNotFoundError(f"UCF-101: data.raw_root not found: {raw_root}; {UCF101_HOW_TO_GET}")
        videos, lists = raw_root / "UCF-101", raw_root / "ucfTrainTestlist"
        if not videos.is_dir():
            raise FileNotFoundError(f"UCF-101: {videos} not found; {UCF101_HOW_TO_GET}")
        self.raw_root, self.split, self.fold, self.clip = raw_root, split, fold, clip
        self.frames, self.stride, self.resolution = frames, stride, positive_int(self.name, "resolution", resolution)
        self.span = (frames - 1) * stride + 1
        classes = read_class_ind(lists / "classInd.txt")
        index = {c.lower(): i for i, c in enumerate(classes)}  # list files' folder part, any case
        if split == "all":
            pairs = []
            for i, c in enumerate(classes):
                if not (videos / c).is_dir():
                    raise FileNotFoundError(f"UCF-101: class folder {videos / c} (from classInd.txt) not found")
                pairs += [(str(videos / c / f), i) for f in sorted(os.listdir(videos / c)) if f.lower().endswith(".avi")]
            listed = [p for name in ("train", "test") if (lists / f"{name}list{fold:02d}.txt").is_file()
                      for p, _ in self.read_split_list(lists / f"{name}list{fold:02d}.txt", videos, index)]
        else:
            pairs = listed = self.read_split_list(lists / f"{split}list{fold:02d}.txt", videos, index)
            listed = [p for p, _ in listed]
        self.missing = [p for p in listed if not os.path.isfile(p)]
        if self.missing:  # counted, and recorded in the shard index by prepare
            log.warning("UCF-101: %d video(s) named in %s's fold-%d lists are missing under %s (first: %s); left out",
                        len(self.missing), lists, fold, videos, self.missing[0])
            gone = set(self.missing)
            pairs = [(p, y) for p, y in pairs if p not in gone]
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
            log.info("UCF-101: %s has %d frames, fewer than a clip of %d frames at stride %d: last frame repeated",
                     source.path, t + 1, self.frames, self.stride)
            self.notes["padded"] = True
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
