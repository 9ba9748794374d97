"""The dense peak FLOP/s a device offers at a precision: the denominator of MFU.

GPUs: the vendors' dense (no 2:4 sparsity) tensor-core figures for the SXM / PCIe parts, matched by
``torch.cuda.get_device_name``; ``tf32`` is what fp32 matmuls reach when TF32 is allowed. A GPU not in
the table, or a card clocked differently, takes ``peak_tflops`` from the config instead. CPUs have no
table worth trusting (cores, clocks and vector units vary per machine), so their peak is a GEMM measured
at start: MFU on a CPU is "share of the best matmul this machine did just now".
"""
from __future__ import annotations

import functools
import time

import torch

from elt.runtime.kernels import onednn_available, onednn_bf16, onednn_linear

# TFLOP/s, dense. Sources: NVIDIA's A100 / H100 / H200 / L4 / L40S datasheets and the Ada whitepaper
# (RTX 4090: bf16 with fp32 accumulation, which is what PyTorch's matmuls use).
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "RTX 4090": {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6},
}


def math_mode(choice: str, device_type: str) -> str:
    """The matmul precision behind a resolved training precision ("bf16" or "32"): bf16, tf32 (fp32
    tensors on a GPU while ``torch.backends.cuda.matmul.allow_tf32`` is on) or fp32."""
    if choice == "bf16":
        return "bf16"
    return "tf32" if device_type == "cuda" and torch.backends.cuda.matmul.allow_tf32 else "fp32"


def gpu_entry(name: str) -> dict[str, float] | None:
    """The table's row for a device name; the longest key that occurs in it wins ("H100 PCIe" over
    "H100", "L40S" over "L4")."""
    hits = [k for k in GPU_PEAK_TFLOPS if k.lower() in name.lower()]
    return GPU_PEAK_TFLOPS[max(hits, key=len)] if hits else None


@functools.lru_cache(maxsize=None)
def measured_gemm_tflops(device: str, dtype: torch.dtype = torch.float32, size: int = 1024, reps: int = 5,
                         threads: int | None = None) -> float:
    """Best of ``reps`` square ``size`` matmuls (after one warm-up), in TFLOP/s, over ATen's matmul and, on a
    CPU, oneDNN's (faster where ATen's MKL runs below the core's peak), whatever ``cpu_kernels`` is: the
    best this machine does. ``threads`` only keys the cache: a run that changes the thread count measures again."""
    del threads
    return gemm_tflops_now(torch.device(device), dtype, size, reps)


def gemm_tflops_now(dev: torch.device, dtype: torch.dtype, size: int = 1024, reps: int = 5) -> float:
    """``measured_gemm_tflops`` without the cache: this moment's peak (benchmarks take one per repetition)."""
    g = torch.Generator().manual_seed(0)  # its own generator: measuring must not move a run's global RNG
    a, b = (torch.randn(size, size, generator=g).to(dev, dtype) for _ in range(2))
    onednn = dev.type == "cpu" and (onednn_bf16() if dtype == torch.bfloat16 else
                                    dtype == torch.float32 and onednn_available())
    kernels = [lambda: a @ b] + ([lambda: onednn_linear(a, b)] if onednn else [])
    best = float("inf")
    for fn in kernels:
        for _ in range(reps + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e12


def peak_flops(device: torch.device, choice: str, override_tflops: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s, where it came from) for ``device`` at the resolved precision ``choice``."""
    if override_tflops is not None:
        if float(override_tflops) <= 0:
            from elt.runtime.config import ConfigError

            raise ConfigError(f"peak_tflops must be > 0 (the device's dense peak in TFLOP/s), got {override_tflops!r}")
        return float(override_tflops) * 1e12, "config"
    mode = math_mode(choice, device.type)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        entry = gpu_entry(name)
        if entry is not None:
            return entry[mode] * 1e12, f"{name} {mode} datasheet"
        dtype = torch.bfloat16 if mode == "bf16" else torch.float32
        return measured_gemm_tflops(str(device), dtype, 4096) * 1e12, f"{name}: not in the table, measured {mode} GEMM"
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    tflops = measured_gemm_tflops(str(device), dtype, threads=torch.get_num_threads())
    return tflops * 1e12, f"measured {mode} GEMM, {torch.get_num_threads()} threads"
