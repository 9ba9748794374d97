"""Generated samples saved in the format of ADM's evaluator (openai/guided-diffusion, evaluations/evaluator.py),
the tool DiT, SiT, REPA and MAR report FID with: an ``.npz`` whose ``arr_0`` is uint8 [N, H, W, 3] (videos:
[N, T, H, W, 3]), with the class labels beside it as ``labels`` [N].

Every rank writes the batches it drew as parts; rank 0 then streams them, in batch order, into one
zip member, so no process holds all N samples (50,000 ImageNet images are 9.8 GB).
"""
from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from elt.evaluation.scoring import npz_member_shape


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] (or [B, C, T, H, W]) floats in [0, 1] -> uint8 [B, H, W, 3] ([B, T, H, W, 3]), rounded;
    one channel is repeated to three, as the evaluator's InceptionV3 reads RGB."""
    if x.ndim not in (4, 5) or x.shape[1] not in (1, 3):
        raise ValueError(f"samples must be [B, 1|3, H, W] or [B, 1|3, T, H, W], got {list(x.shape)}")
    u8 = (x.detach().float().cpu() * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    if u8.shape[1] == 1:
        u8 = u8.expand(-1, 3, *u8.shape[2:])
    return u8.movedim(1, -1).contiguous().numpy()


class SampleParts:
    """``<dir>/<key>.parts/``: one file per batch, written by whichever rank drew it."""

    def __init__(self, directory: Path, key: str):
        self.dir, self.key = Path(directory), key
        self.parts = self.dir / f"{key}.parts"
        self.path = self.dir / f"{key}.npz"

    def write(self, i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        self.parts.mkdir(parents=True, exist_ok=True)
        tmp = self.parts / f".{i:07d}.npz.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, images=to_uint8(x), labels=y.detach().cpu().numpy().astype(np.int64))
        os.replace(tmp, self.parts / f"{i:07d}.npz")

    def assemble(self, n_batches: int) -> Path:
        """``<key>.npz`` from parts 0..n_batches-1 in order (written atomically), then the parts removed."""
        files = [self.parts / f"{i:07d}.npz" for i in range(n_batches)]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{self.parts}: sample parts missing ({', '.join(missing[:3])}"
                                    f"{'…' if len(missing) > 3 else ''}); ranks on different machines need a shared "
                                    "eval.output_dir for eval.save_samples")
        labels, shape = [], None
        for f in files:  # headers and labels only: the images stay on disk
            with np.load(f) as z:
                labels.append(z["labels"])
                s = npz_member_shape(z, "images")
            if shape is not None and s[1:] != shape[1:]:
                raise ValueError(f"{f}: samples of shape {list(s[1:])}, earlier parts {list(shape[1:])}")
            shape = (0 if shape is None else shape[0]) + s[0], *s[1:]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as out:
                np.lib.format.write_array_header_2_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                           "fortran_order": False, "shape": tuple(shape)})
                for f in files:
                    with np.load(f) as z:
                        out.write(np.ascontiguousarray(z["images"]).tobytes())
            with zf.open("labels.npy", "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.concatenate(labels))
        os.replace(tmp, self.path)
        shutil.rmtree(self.parts, ignore_errors=True)
        return self.path

