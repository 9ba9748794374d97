"""CPU matmul kernels that PyTorch's defaults leave unused, behind one switch (``cpu_kernels``).

fp32 linear layers: ATen sends CPU fp32 matmuls to MKL, which takes its AVX-512 code paths on Intel CPUs
only; on other x86 CPUs (AMD EPYC) it runs its AVX2 path at about half of what the core can do, while
oneDNN's JIT GEMM, shipped in every x86 PyTorch build, runs near the core's peak on both
(benchmarks/results/dit_official.md: DiT-S/2 on an AMD EPYC). ``linear`` therefore sends fp32 CPU
matmuls of at least ``ONEDNN_MIN_MACS`` multiply-adds to oneDNN, forward and backward (three GEMMs, as
ATen's). Smaller ones stay on ATen: oneDNN's per-call set-up costs more than it saves below a few MFLOP. Under a
dispatch mode (``torch.utils.flop_counter``, fake tensors) or ``torch.compile`` everything stays on ATen,
so counters and compilers see the ops they know.
bf16 matmuls (autocast) already run on oneDNN where it computes bf16 (AVX-512 and later); there
``linear(..., gelu=True)`` without autograd fuses the tanh-GELU into the GEMM's epilogue, which saves a pass
in fp32 over the MLP's widest activation (and rounds once instead of twice: within one bf16 ulp of
autocast's F.linear + F.gelu).

Attention: under CPU bf16, up to ``MATH_ATTENTION_MAX_SCORES`` scores per head (a 16×16 grid of DiT patches
or MaskGIT tokens), the explicit form, two bf16 GEMMs around ATen's bf16 softmax (fp32 inside, rounded
once), beats PyTorch's fused CPU kernel, whose backward has a large fixed cost
(benchmarks/results/attention.md). Asking that softmax for an fp32 result from bf16 scores takes a slow path
(~7x), hence bf16 in and out. The costs: the scores are rounded to bf16 before the softmax, as autocast's
plain ``q @ kᵀ`` does (~1% relative error against ~0.2% for the fused kernel, which keeps fp32 scores, at
logits of standard deviation 4), and the probabilities are kept for the backward (one bf16 per query-key
pair), so longer sequences keep the fused kernel. Without autograd the scores are scaled and soft-maxed in
place in one buffer: fewer large allocations, which glibc serves with fresh pages each time (measurably
slower at these sizes). That path scales the product rather than q, so where d^-½ is not a power of two it
rounds differently from the training path (within a bf16 step). fp32 keeps SDPA everywhere (its MKL batched
GEMMs are no faster than the fused kernel).

``auto`` (the default) uses these paths; ``aten`` restores PyTorch's choices everywhere (to compare, or
to reproduce numbers computed with them: the two differ only in floating-point rounding).
"""
from __future__ import annotations

import functools
import platform

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode

from elt.runtime.config import ConfigError

MODES = ("auto", "aten")
# query x key positions per head: a 16x16 grid plus MaskGIT's class token. The explicit form is faster at every
# length benchmarks/attention.py measured; the cap bounds what it keeps for the backward (quadratic in length)
MATH_ATTENTION_MAX_SCORES = 257 * 257
ONEDNN_MIN_MACS = 1 << 21  # M·K·N: below this oneDNN's set-up outweighs its faster GEMM (measured, 1 thread)
_mode = "auto"


def set_cpu_kernels(mode: str, check_only: bool = False) -> None:
    """``auto`` | ``aten`` for this process (see the module docstring)."""
    global _mode
    if mode not in MODES:
        raise ConfigError(f"cpu_kernels must be one of {', '.join(MODES)}, got {mode!r}")
    if not check_only:
        _mode = mode


def cpu_kernels() -> str:
    return _mode


@functools.lru_cache(maxsize=None)
def onednn_available() -> bool:
    """oneDNN's linear is there and runs (x86 builds with mkldnn; other CPUs keep ATen's kernels)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.ones(2, 3, device="cpu")
        return bool(torch.allclose(_onednn(x, torch.ones(4, 3, device="cpu"), None), torch.full((2, 4), 3.0)))
    except (RuntimeError, AttributeError):
        return False


@functools.lru_cache(maxsize=None)
def onednn_bf16() -> bool:
    """oneDNN computes bf16 here (AVX-512 and later); elsewhere ATen's own fallback runs bf16 matmuls."""
    return onednn_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str = "none") -> torch.Tensor:
    """x @ weightᵀ + bias (then ``act``) in oneDNN, whatever the process's mode."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, act, [], "tanh" if act == "gelu" else "")


def onednn_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weightᵀ on oneDNN, without autograd, whatever the mode: for measuring the machine's GEMM peak."""
    return _onednn(x, weight, None)


class _OneDNNLinear(torch.autograd.Function):
    """Forward and backward GEMMs on oneDNN. First-order only (``once_differentiable``; no vmap / jvp):
    training needs nothing more, and ``cpu_kernels=aten`` gives ATen's full autograd back."""
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad2 = grad.reshape(-1, grad.shape[-1])
        grad_x = _onednn(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
        grad_w = _onednn(grad2.t(), x.reshape(-1, x.shape[-1]).t(), None) if ctx.needs_input_grad[1] else None
        grad_b = grad2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def _plain(t: torch.Tensor | None) -> bool:
    return t is None or type(t) in (torch.Tensor, nn.Parameter)  # not a DTensor or another subclass


def _cpu_autocast_bf16() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           gelu: bool = False) -> torch.Tensor:
    """``F.linear`` (then tanh-GELU when ``gelu``) on the fastest CPU kernel this process may use."""
    if _ours(x) and x.dim() >= 2 and _plain(weight) and _plain(bias) and onednn_available():
        if _cpu_autocast_bf16():
            if gelu and not torch.is_grad_enabled() and onednn_bf16():
                b = None if bias is None else bias.to(torch.bfloat16)
                return _onednn(x.to(torch.bfloat16), weight.to(torch.bfloat16), b, "gelu")
        elif not torch.is_autocast_enabled("cpu") and x.dtype == weight.dtype == torch.float32 \
                and x.numel() * weight.shape[0] >= ONEDNN_MIN_MACS:
            y = _OneDNNLinear.apply(x, weight, bias) if torch.is_grad_enabled() else _onednn(x, weight, bias)
            return F.gelu(y, approximate="tanh") if gelu else y
    y = F.linear(x, weight, bias)
    return F.gelu(y, approximate="tanh") if gelu else y


def _ours(t: torch.Tensor) -> bool:
    """May this process's CPU kernels take ``t`` (not a counter's or compiler's trace, not a subclass)?"""
    return (_mode == "auto" and t.device.type == "cpu" and _plain(t) and not torch.compiler.is_compiling()
            and _get_current_dispatch_mode() is None and not torch._C._functorch.is_functorch_wrapped_tensor(t))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, dropout_p)`` ([..., heads, tokens, dim]), on the faster
    CPU form under bf16 for short sequences (see the module docstring)."""
    if dropout_p == 0.0 and _ours(q) and (q.dtype == torch.bfloat16 or _cpu_autocast_bf16()) \
            and q.shape[-2] * k.shape[-2] <= MATH_ATTENTION_MAX_SCORES:
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
        if not torch.is_grad_enabled():  # one score buffer: scaled and soft-maxed in place
            scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
            if scores.is_contiguous():  # the out= kernel assumes a dense buffer
                return torch.matmul(torch.ops.aten._softmax.out(scores, -1, False, out=scores), v)
            return torch.matmul(torch.softmax(scores, -1), v)
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
        return torch.matmul(torch.softmax(scores, -1), v)  # bf16 in and out, fp32 inside (see the docstring)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict names) whose forward is ``linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
