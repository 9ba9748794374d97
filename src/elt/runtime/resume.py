"""What makes a training run survive a cluster: checkpoints that a failed save cannot destroy,
preemption signals that save and exit non-zero, random state in the checkpoint, and resume checks
that fail before any work instead of after it.

A resumed run is exact because nothing it draws depends on how it got to a step: the corruption
noise and ILSD's student exit come from generators seeded by (seed, rank, step) (see
``models.base``), the data order from (seed, epoch) with the position inside the epoch stored in
the checkpoint (``data.sampler``), and the global RNGs (dropout, if any) are restored per rank.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from elt.runtime.checkpoint import CheckpointError, read_checkpoint
from elt.runtime.files import naming

log = logging.getLogger(__name__)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, so streams for (seed, rank, step) never collide or correlate."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file in the checkpoint's own directory, then ``os.replace``.

    Lightning's default goes through a temporary file elsewhere and a copy that truncates the
    destination first: a full disk mid-copy leaves an unreadable ``last.ckpt`` and nothing else. Here
    the previous file is replaced only by a complete new one (a rename within one filesystem), and a
    full disk is one line naming the checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:  # one line naming the checkpoint (elt.runtime.files.io_error_line)
            named = naming(e, path, tmp)
            if named is e:
                raise
            raise named from e
        finally:
            tmp.unlink(missing_ok=True)


# ---- preemption ------------------------------------------------------------------------------------
class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; exits with 128 + signal number."""


def restore_signals(previous: dict) -> dict:
    """Put back the handlers a stop-signal hook replaced (``{signal: handler}``); returns an empty map.
    A handler Python cannot reinstall (not the main thread, one set from C) is left as it is."""
    for s, handler in previous.items():
        try:
            signal.signal(s, handler)
        except (ValueError, TypeError):
            pass
    return {}


class Preemption(L.Callback):
    """SIGTERM (preemption), SIGUSR1 (SLURM's warning before the time limit) and SIGINT (Ctrl-C)
    finish the current step, save ``last.ckpt`` and exit non-zero, so a scheduler sees a failure
    and a rerun with ``ckpt_path=last`` resumes at that step. A second Ctrl-C stops at once.

    Ranks agree through one all-reduce per step: a signal seen by any rank stops all of them at the
    same step (every rank must take part in the collective save)."""

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1", "SIGINT")):
        self.signals = [getattr(signal, s) for s in signals]
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: do not wait for the step
        self.received = signum

    def _install(self) -> None:
        try:
            for s in self.signals:
                signal.signal(s, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook's worker): leave signals alone
            pass

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Runs before Lightning installs its handlers: remember the process's originals. Until
        training starts, Lightning's handler notes a SIGTERM (``trainer.received_sigterm``)."""
        self.received = None
        if not self._previous:
            self._previous = {s: signal.getsignal(s) for s in self.signals}

    def on_train_start(self, trainer, pl_module) -> None:
        self._install()  # Lightning registered its handlers in between

    def _restore(self) -> None:
        self._previous = restore_signals(self._previous)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is None and getattr(trainer, "received_sigterm", False):
            self.received = signal.SIGTERM  # arrived while Lightning's handler was in place (setup, sanity check)
        stop = self.received is not None
        accumulating = getattr(trainer.fit_loop.epoch_loop, "_should_accumulate", lambda: False)()
        if accumulating:  # mid-accumulation: half a gradient is not in a checkpoint; stop at the step's end
            return
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        signum = self.received or signal.SIGTERM  # another rank's signal
        path = last_checkpoint_path(trainer)
        if path is not None:
            trainer.save_checkpoint(path)
        name = signal.Signals(signum).name
        if trainer.is_global_zero:
            where = f"saved {path}" if path else "no checkpoint callback: nothing saved"
            print(f"{name} at step {trainer.global_step}: {where}; rerun the same command with ckpt_path=last "
                  f"to resume", file=sys.stderr, flush=True)
        raise Preempted(128 + int(signum))


def last_checkpoint_path(trainer) -> str | None:
    """``<dirpath>/last.ckpt`` of the run's ModelCheckpoint (None when checkpoints are off)."""
    cb = next((c for c in trainer.checkpoint_callbacks if c.save_last and c.dirpath), None)
    if cb is None:
        return None
    return str(Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}")


# ---- random state ----------------------------------------------------------------------------------
class RandomState(L.Callback):
    """Every rank's global RNG states (python, numpy, torch, CUDA) in the checkpoint, restored on
    resume. The project's own draws do not use them (they are seeded per step), but user code,
    dropout or augmentations might."""

    @staticmethod
    def capture() -> dict:
        """Tensors and plain numbers only, so the checkpoint still loads with ``weights_only``."""
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {"python": random.getstate(), "torch": torch.get_rng_state(),
                 "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                           "has_gauss": int(has_gauss), "cached": float(cached)}}
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # this rank's device only
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def state_dict(self) -> dict:
        mine = self.capture()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, mine)
            return {"per_rank": states}
        return {"per_rank": [mine]}

    def load_state_dict(self, state_dict: dict) -> None:
        states = state_dict.get("per_rank") or []
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        if rank >= len(states):  # resumed on more ranks than saved: new ranks keep their seeded state
            log.warning("checkpoint holds RNG states of %d rank(s); rank %d keeps its seeded state", len(states), rank)
            return
        s = states[rank]
        random.setstate(s["python"])
        n = s["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        torch.set_rng_state(s["torch"])
        if "cuda" in s and torch.cuda.is_available():
            torch.cuda.set_rng_state(s["cuda"])


# ---- resuming ------------------------------------------------------------------------------------
def resolve_ckpt_path(spec, ckpt_dir) -> str | None:
    """``ckpt_path``: null (fresh), ``last`` (``last.ckpt`` in the run's checkpoint directory when it
    exists, else a fresh start: what a requeued job needs) or a file that must exist."""
    if spec in (None, "", "null", "None"):
        return None
    if str(spec) == "last":
        path = Path(ckpt_dir) / "last.ckpt"
        if path.is_file():
            log.info("ckpt_path=last: resuming from %s", path)
            return str(path)
        log.info("ckpt_path=last: no %s yet, starting from scratch", path)
        return None
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={spec}: no such file (pass a .ckpt written by train.py, or ckpt_path=last)")
    return str(path)


def config_differences(old: dict | None, new: dict, keys=("model", "data", "scale", "N", "Lmax")) -> list[str]:
    """``key: old -> new`` for the leaves that differ under ``keys`` (what a wrong resume usually is)."""
    out: list[str] = []

    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        elif a != b:
            out.append(f"{prefix}: {a!r} -> {b!r}")

    for k in keys:
        walk((old or {}).get(k), new.get(k), k)
    return out


def check_resumable(path: str, model: torch.nn.Module, config: dict) -> dict:
    """Fail before any work when the checkpoint cannot continue this model; returns the checkpoint."""
    ckpt = read_checkpoint(path)
    saved, mine = ckpt["state_dict"], model.state_dict()
    problems = [f"missing {k}" for k in mine if k not in saved][:3]
    problems += [f"unexpected {k}" for k in saved if k not in mine][:3]
    problems += [f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}" for k, v in mine.items()
                 if k in saved and hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(v.shape)][:3]
    if problems:
        diffs = config_differences(ckpt.get("elt_config"), config)
        why = "; config differs in " + ", ".join(diffs[:4]) if diffs else ""
        raise CheckpointError(f"checkpoint {path} does not fit this model ({', '.join(problems[:3])}){why}")
    return ckpt
