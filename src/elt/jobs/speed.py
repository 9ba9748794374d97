"""How fast a training run goes, and the GPU defaults that make it go fast: two Lightning callbacks
(configs/callbacks/default.yaml).

``ThroughputMonitor`` logs, over windows of ``every_n_steps`` optimiser steps, per device: samples/s,
tokens/s, achieved TFLOP/s from the analytic FLOPs (``elt.core.flops.training_flops_per_sample``), MFU
against the device's dense peak at the precision in use (``elt.runtime.peak``) and the share of step
time spent waiting for the next batch. The wait is the time between one batch's end and the next one's
start: data loading and host-to-device copies; intervals in which validation ran or a checkpoint was
written are left out of every figure (they are neither training nor waiting for data).

``SpeedDefaults`` applies the settings the fast DiT trainers use, each a key with its reason in the
config: TF32 matmuls on Ampere and later, fused AdamW on CUDA, the SDPA kernel choice.
"""
from __future__ import annotations

import logging
import time

import torch
from lightning.pytorch.callbacks import Callback

from elt.core.flops import tokens_per_sample, training_flops_per_sample
from elt.core.optim import with_fused
from elt.runtime.config import ConfigError
from elt.runtime.devices import set_sdpa_backend
from elt.runtime.kernels import set_cpu_kernels
from elt.runtime.peak import peak_flops
from elt.runtime.precision import set_tf32

log = logging.getLogger(__name__)


def batch_size(batch) -> int:
    """Samples in a batch: the leading size of its labels (every dataset's items carry one)."""
    if isinstance(batch, dict):
        batch = batch.get("label", next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    return int(batch.shape[0])


def precision_choice(trainer) -> str:
    """The resolved training precision ("bf16" or "32") of a Trainer."""
    return "bf16" if "bf16" in str(trainer.precision) else "32"


class ThroughputMonitor(Callback):
    """Samples/s, tokens/s, TFLOP/s, MFU and data-wait share per device, logged every step (the last
    finished window's values) and shown in the progress bar. ``peak_tflops`` overrides the device's
    peak (a GPU not in the table, a card at other clocks); on a CPU the peak is a GEMM measured at start.
    ``cuda_sync``: synchronise at the batch end that closes a window, so the window's GPU work is inside
    its steps and not counted as waiting for data (the split between steps and waits within a window
    is then approximate; a sync every step would stall the CPU's queueing ahead of the GPU)."""

    KEYS = ("samples_per_s", "tokens_per_s", "tflops", "mfu", "data_wait")

    def __init__(self, every_n_steps: int = 50, peak_tflops: float | None = None, cuda_sync: bool = True,
                 prog_bar: bool = True):
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ConfigError(f"callbacks.throughput.every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        self.every_n_steps, self.peak_tflops = every_n_steps, peak_tflops
        self.cuda_sync, self.prog_bar = bool(cuda_sync), bool(prog_bar)
        self.last: dict[str, float] = {}  # the last finished window's figures
        self.peak = self.peak_source = None

    def on_train_start(self, trainer, pl_module):
        self.device = pl_module.device
        self.peak, self.peak_source = peak_flops(self.device, precision_choice(trainer), self.peak_tflops)
        self.flops_per_sample = training_flops_per_sample(pl_module)
        self.tokens = tokens_per_sample(pl_module)
        log.info("throughput: %.3g GFLOPs per training sample, %d tokens; peak %.1f TFLOP/s (%s)",
                 self.flops_per_sample / 1e9, self.tokens, self.peak / 1e12, self.peak_source)
        self.reset()
        self.last_end = None
        self.gap_spoiled = False
        self.logged_step = trainer.global_step

    def reset(self):
        self.busy = self.wait = 0.0
        self.samples = 0

    # ---- timing ------------------------------------------------------------------------------
    def _sync(self):
        if self.cuda_sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        if self.last_end is not None and not self.gap_spoiled:
            self.wait += now - self.last_end
        self.gap_spoiled = False
        self.step_start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        closing = step - self.logged_step >= self.every_n_steps
        if closing:  # only where a window closes: a sync every step would stop the CPU queueing ahead of the GPU
            self._sync()
        now = time.perf_counter()
        self.busy += now - self.step_start
        self.samples += batch_size(batch)
        self.last_end = now
        if closing and self.samples:
            self.last = self.figures()
            self.logged_step = step
            self.reset()
        for key, value in self.last.items():
            pl_module.log(f"perf/{key}", value, prog_bar=self.prog_bar and key in ("samples_per_s", "mfu"),
                          on_step=True, on_epoch=False)

    def figures(self) -> dict[str, float]:
        total = self.busy + self.wait
        samples_per_s = self.samples / total
        flops = samples_per_s * self.flops_per_sample
        return {"samples_per_s": samples_per_s, "tokens_per_s": samples_per_s * self.tokens,
                "tflops": flops / 1e12, "mfu": flops / self.peak, "data_wait": self.wait / total}

    # validation and checkpoint writes happen between two batches: that gap is not data loading
    def on_validation_start(self, trainer, pl_module):
        self.gap_spoiled = True

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.gap_spoiled = True


class SpeedDefaults(Callback):
    """The GPU settings of the fast DiT stacks, applied before the optimiser is built.

    ``tf32``: fp32 matmuls and convolutions on TF32 tensor cores (Ampere and later; no effect on a CPU or
    under bf16 autocast's bf16 matmuls). ``fused_adamw``: auto (fused on CUDA) | true | false, for an AdamW
    built from the model's optimizer config (one kernel for all parameters instead of a loop of small
    ones). ``sdpa``: auto (PyTorch's choice: flash, then memory-efficient, then math) | flash | efficient |
    math (forcing one is for diagnosis; a kernel the inputs do not fit raises). ``cpu_kernels``: auto (fp32
    linears on oneDNN where ATen's MKL runs below the CPU's peak, ``elt.runtime.kernels``) | aten."""

    def __init__(self, tf32: bool = True, fused_adamw="auto", sdpa: str = "auto", cpu_kernels: str = "auto"):
        if not isinstance(tf32, bool):
            raise ConfigError(f"callbacks.speed.tf32 must be true or false, got {tf32!r}")
        if fused_adamw not in ("auto", True, False):
            raise ConfigError(f"callbacks.speed.fused_adamw must be auto, true or false, got {fused_adamw!r}")
        self.tf32, self.fused_adamw, self.sdpa, self.cpu_kernels = tf32, fused_adamw, sdpa, cpu_kernels
        set_sdpa_backend(sdpa, check_only=True)
        try:
            set_cpu_kernels(cpu_kernels, check_only=True)
        except ConfigError as e:
            raise ConfigError(f"callbacks.speed.{e}") from None

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        device_type = trainer.strategy.root_device.type
        set_tf32(self.tf32)
        set_sdpa_backend(self.sdpa)
        set_cpu_kernels(self.cpu_kernels)
        fused = device_type == "cuda" if self.fused_adamw == "auto" else self.fused_adamw
        if hasattr(pl_module, "optimizer_factory"):  # None: AdamW's defaults (LoopedGenerativeModule)
            pl_module.optimizer_factory = with_fused(pl_module.optimizer_factory, fused)
        log.info("speed defaults on %s: tf32=%s, fused AdamW=%s, sdpa=%s, cpu_kernels=%s", device_type, self.tf32,
                 fused, self.sdpa, self.cpu_kernels)

    def teardown(self, trainer, pl_module, stage):
        if stage == "fit":  # the mode is process-wide: a later run in this process starts from the default
            set_cpu_kernels("auto")
