"""Tiny models for unit tests: real classes, shrunk."""
from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import lightning as L
import torch
from torch import nn

from elt.models.maskgit import MaskGITELT
from elt.encoders.tokenizers import PixelTokenizer


def tiny_maskgit(N: int = 2, Lmax: int = 3, ilsd: bool = True, **kw) -> MaskGITELT:
    torch.manual_seed(0)
    return MaskGITELT(
        PixelTokenizer(17, (1, 8, 8)), num_classes=10, N=N, Lmax=Lmax, width=32, heads=2, mlp_dim=64,
        ilsd={"enabled": ilsd, "Lmin": 1}, **kw,
    )


def digits_batch(n: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 17, (n, 1, 8, 8), generator=g).float() / 16
    return {"image": images, "label": torch.randint(0, 10, (n,), generator=g)}


class CallCounter:
    """Counts forward calls of a module (e.g. the first block = one per loop)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1


class TinyI3D(nn.Module):
    """StyleGAN-V's detector call convention on a network small enough for a test."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 12)

    def forward(self, videos: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        assert videos.dtype == torch.uint8 and videos.shape[1] == 3
        x = videos.float()
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = nn.functional.interpolate(x, size=(x.shape[2], 16, 16), mode="trilinear", align_corners=False)
        feats = self.proj(x.mean((3, 4)).transpose(1, 2)).flatten(1)  # per-frame colour, projected
        return feats if return_features else feats.softmax(-1)


class TinyMagvit(torch.nn.Module):
    """MAGVIT's interface and shapes: [B, 3, 16, 128, 128] <-> ids [B, 4, 16, 16] from 1024."""

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.nn.functional.avg_pool3d(x.mean(1, keepdim=True), (4, 8, 8))[:, 0]
        return (g * 1023).round().long().clamp(0, 1023)

    @torch.jit.export
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        v = (ids.float() / 1023)[:, None].repeat_interleave(4, 2).repeat_interleave(8, 3).repeat_interleave(8, 4)
        return v.expand(-1, 3, -1, -1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)


def save_magvit_stand_in(path):
    """A TorchScript file with MAGVIT's UCF-101 shapes, for tests of data=ucf101 (no real weights)."""
    torch.jit.script(TinyMagvit()).save(str(path))
    return path


class TinyVideoVAE(torch.nn.Module):
    """A video autoencoder's interface: [B, 3, 16, 128, 128] <-> latents [B, 4, 4, 16, 16]."""

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool3d(x, (4, 8, 8))[:, :3].repeat(1, 2, 1, 1, 1)[:, :4] * 2 - 1

    @torch.jit.export
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return ((z[:, :3] + 1) / 2).repeat_interleave(4, 2).repeat_interleave(8, 3).repeat_interleave(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)


def save_video_vae_stand_in(path):
    torch.jit.script(TinyVideoVAE()).save(str(path))
    return path


class KillAt(L.Callback):
    """A callback (built from config: +callbacks.kill._target_=helpers.KillAt) that sends this
    process a signal at the end of training step ``step`` (step 0: at the sanity check, before
    training), as a scheduler would."""

    def __init__(self, step: int, sig: str = "SIGTERM"):
        self.step, self.sig = int(step), sig

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            self.kill()

    def on_sanity_check_start(self, trainer, pl_module):
        if self.step == 0:  # before training: Lightning's own handler is the one in place
            self.kill()

    def kill(self):
        os.kill(os.getpid(), getattr(signal, self.sig))


def digest(obj) -> str:
    if isinstance(obj, dict):
        return hashlib.sha1("".join(digest(obj[k]) for k in sorted(obj)).encode()).hexdigest()[:12]
    return hashlib.sha1(obj.detach().cpu().numpy().tobytes()).hexdigest()[:12]


class RankRecorder(L.Callback):
    """Collects one record per training step; each rank writes its list to
    ``<output_dir>/<stem>_rank<r>.json`` when training ends."""

    stem = "records"

    def __init__(self, output_dir: str):
        self.output_dir, self.steps = Path(output_dir), []

    def on_train_end(self, trainer, pl_module):
        (self.output_dir / f"{self.stem}_rank{trainer.global_rank}.json").write_text(json.dumps(self.steps))


class NoiseProbe(RankRecorder):
    """Per rank and step: a draw from a copy of the step's noise stream, the student exit and the
    items of the batch (probe_rank<r>.json)."""

    stem = "probe"

    def on_fit_start(self, trainer, pl_module):
        original = pl_module.training_inputs

        def recording(batch, generator=None):
            if pl_module.training:  # a draw from a copy of the step's own noise stream, not of the data
                probe = torch.Generator(device=generator.device)
                probe.set_state(generator.get_state())
                self.current = {"noise": digest(torch.rand(8, generator=probe, device=generator.device)),
                                "items": sorted(digest(x) for x in batch["image"])}
            return original(batch, generator=generator)

        pl_module.training_inputs = recording

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append({**self.current, "step": trainer.global_step, "lint": pl_module.last_lint})


class KeyProbe(RankRecorder):
    """Per rank, the sample keys of every training batch (shards carry ``batch["key"]``): keys_rank<r>.json."""

    stem = "keys"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append({"step": trainer.global_step, "epoch": trainer.current_epoch, "keys": list(batch["key"])})
