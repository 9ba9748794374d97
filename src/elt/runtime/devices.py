"""Where work runs: the device an evaluation or sampling job picks, and single-threaded sections."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from elt.runtime.config import ConfigError
from elt.runtime.distributed import Ranks


def pick_device(spec: str, ranks: Ranks) -> torch.device:
    """The evaluation device, with its index: under torchrun a rank's GPU is its LOCAL_RANK."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"eval.device must be auto, cpu or cuda[:i], got {spec!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"eval.device={spec} but no CUDA device is available (use auto or cpu)")
    if device.type == "cuda" and ranks.world > 1:
        if device.index is not None:
            raise ConfigError(f"eval.device={spec}: under torchrun each rank uses GPU LOCAL_RANK; pass auto or cuda")
        if ranks.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={ranks.local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        device = torch.device("cuda", ranks.local_rank)
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


@contextmanager
def single_thread():
    """Kernels this small gain nothing from threads, and on a busy machine OpenMP workers waiting
    for each other make them several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


SDPA_BACKENDS = ("auto", "flash", "efficient", "math")


def set_sdpa_backend(spec: str, check_only: bool = False) -> None:
    """Which CUDA kernels ``scaled_dot_product_attention`` may use: ``auto`` leaves PyTorch's order (flash
    for bf16 / fp16 inputs, then memory-efficient, then the math fallback); a name allows that kernel alone
    (to diagnose a speed or memory difference; inputs it cannot take then raise). CPUs have their own
    fused kernel and ignore this."""
    if spec not in SDPA_BACKENDS:
        raise ConfigError(f"sdpa must be one of {', '.join(SDPA_BACKENDS)}, got {spec!r}")
    if check_only:
        return
    for name, setter in (("flash", torch.backends.cuda.enable_flash_sdp),
                         ("efficient", torch.backends.cuda.enable_mem_efficient_sdp),
                         ("math", torch.backends.cuda.enable_math_sdp)):
        setter(spec in ("auto", name))
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(spec == "auto")
