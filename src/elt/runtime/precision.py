"""Numeric precision chosen by the hardware, for training and evaluation alike.

bf16 autocast pays only where the device computes bf16 natively: CUDA GPUs of compute capability
>= 8.0, and CPUs with AVX-512-BF16 or AMX. Elsewhere (an AVX2-only CPU) PyTorch falls back to a
reference bf16 path that is ~12x slower than fp32, so ``auto`` picks fp32 there.
"""
from __future__ import annotations

import functools
import logging
from contextlib import nullcontext
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "32")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell, assume no native bf16
        return frozenset()
    return frozenset(w for line in text.splitlines() if line.startswith("flags") for w in line.split(":", 1)[1].split())


def bf16_supported(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        return any(f in cpu_flags() for f in CPU_BF16_FLAGS)
    return False


def resolve(spec, device_type: str, what: str = "trainer.precision") -> str:
    """``auto`` | ``bf16`` | ``32`` (or Lightning's spellings) -> "bf16" or "32", logged once."""
    s = str(spec).lower()
    if s in ("bf16", "bf16-mixed"):
        choice = "bf16"
    elif s in ("32", "32-true", "fp32"):
        choice = "32"
    elif s == "auto":
        choice = "bf16" if bf16_supported(device_type) else "32"
    else:
        from elt.runtime.config import ConfigError

        raise ConfigError(f"{what} must be auto, bf16 (bf16-mixed) or 32 (32-true), got {spec!r}")
    why = "native bf16" if bf16_supported(device_type) else "no native bf16"
    log.info("%s=%s on %s (%s): %s", what, spec, device_type, why, "bf16 autocast" if choice == "bf16" else "fp32")
    return choice


def lightning_precision(spec, accelerator: str) -> str:
    """The Trainer's ``precision`` for a config value that may be ``auto``."""
    device_type = "cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"
    s = str(spec).lower()
    if s not in ("auto", "bf16", "bf16-mixed", "32", "32-true", "fp32"):  # 16-mixed, 64, ...: Lightning's own
        return spec
    return "bf16-mixed" if resolve(spec, device_type) == "bf16" else "32-true"


def autocast(device_type: str, choice: str):
    """Context for sampling under a resolved choice ("bf16" or "32")."""
    if choice == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return nullcontext()


def set_tf32(enabled: bool) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions (CUDA, Ampere and later): ~2x the steps/s of
    full fp32 for DiT (facebookresearch/DiT issue 22: 0.51 -> 0.81 steps/s on an A100), at a 10-bit
    mantissa that diffusion training tolerates. No effect on a CPU or on bf16 autocast's bf16 matmuls."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = bool(enabled)
