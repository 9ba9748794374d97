"""Lightning callbacks that tests plug into real training runs through Hydra
(``+callbacks.<name>._target_=support.callbacks.<Class>``), also in subprocesses whose PYTHONPATH is tests/."""
from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import lightning as L
import torch


class KillAt(L.Callback):
    """A callback (built from config: +callbacks.kill._target_=support.callbacks.KillAt) that sends this
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
