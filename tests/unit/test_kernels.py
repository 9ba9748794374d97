"""The CPU kernel switch (elt.runtime.kernels): same results as ATen, gradients included, on the path it claims."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from elt.core.backbone import Block
from elt.runtime import kernels
from elt.runtime.config import ConfigError

needs_onednn = pytest.mark.skipif(not kernels.onednn_available(), reason="no oneDNN linear in this build")


@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts the oneDNN GEMMs (forward and backward) that ``linear`` makes."""
    calls = []
    real = kernels._onednn

    def spy(*args, **kw):
        calls.append(args[3] if len(args) > 3 else kw.get("act", "none"))
        return real(*args, **kw)

    monkeypatch.setattr(kernels, "_onednn", spy)
    yield calls
    kernels.set_cpu_kernels("auto")


def _reference(x, w, b, gelu):
    y = F.linear(x, w, b)
    return F.gelu(y, approximate="tanh") if gelu else y


@needs_onednn
@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_aten_with_gradients(onednn_calls, gelu, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 96, generator=g, requires_grad=True)  # 3-d input, as the blocks pass it
    w = (0.1 * torch.randn(384, 96, generator=g)).requires_grad_()
    b = torch.randn(384, generator=g).requires_grad_() if bias else None
    leaves = [t for t in (x, w, b) if t is not None]
    ours = kernels.linear(x, w, b, gelu=gelu)
    grads = torch.autograd.grad(ours.square().sum(), leaves)
    assert len(onednn_calls) == 3  # forward, grad input, grad weight: all on oneDNN
    ref = _reference(x, w, b, gelu)
    ref_grads = torch.autograd.grad(ref.square().sum(), leaves)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


@needs_onednn
def test_small_or_counted_or_switched_off_stays_on_aten(onednn_calls):
    w = torch.randn(16, 8)
    kernels.linear(torch.randn(4, 8), w)  # 512 multiply-adds: below ONEDNN_MIN_MACS
    big_x, big_w = torch.randn(256, 128), torch.randn(384, 128)
    with FlopCounterMode(display=False) as counter:  # counters must see the matmul
        kernels.linear(big_x, big_w)
    assert counter.get_total_flops() == 2 * 256 * 128 * 384
    kernels.set_cpu_kernels("aten")
    kernels.linear(big_x, big_w)
    assert onednn_calls == []
    kernels.set_cpu_kernels("auto")
    kernels.linear(big_x, big_w)
    assert onednn_calls == ["none"]


@needs_onednn
def test_bf16_autocast_fuses_gelu_only_without_autograd(onednn_calls):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(64, 96, generator=g), 0.1 * torch.randn(384, 96, generator=g), torch.randn(384, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            fused = kernels.linear(x, w, b, gelu=True)
        ref = _reference(x, w, b, True)
        kernels.linear(x, w.requires_grad_(), b, gelu=True)  # with autograd: autocast's own path
    assert onednn_calls == ["gelu"]
    assert fused.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(fused.float(), ref.float(), rtol=2e-2, atol=2e-2)


@needs_onednn
def test_block_runs_its_matmuls_on_onednn_with_the_same_output(onednn_calls):
    torch.manual_seed(0)
    blk = Block(width=128, heads=4, mlp_dim=512)
    x = torch.randn(2, 64, 128)  # every matmul at least ONEDNN_MIN_MACS
    out = blk(x)
    out.sum().backward()
    assert len(onednn_calls) == 4 * 3  # qkv, proj, fc1, fc2: forward and two backward GEMMs each
    kernels.set_cpu_kernels("aten")
    torch.testing.assert_close(blk(x), out, rtol=1e-5, atol=1e-5)


def test_unknown_mode_is_one_line():
    kernels.set_cpu_kernels("auto")
    with pytest.raises(ConfigError, match="cpu_kernels must be one of auto, aten, got 'mkl'"):
        kernels.set_cpu_kernels("mkl")
    assert kernels.cpu_kernels() == "auto"


def test_bf16_attention_form_matches_sdpa_and_long_sequences_keep_sdpa(monkeypatch):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 64, 32, generator=g).requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.scaled_dot_product_attention(q, k, v)
        ref_grads = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
        sdpa_calls = []
        real = F.scaled_dot_product_attention
        monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: sdpa_calls.append(1) or real(*a, **kw))
        ours = kernels.attention(q, k, v)
        grads = torch.autograd.grad(ours.float().square().sum(), (q, k, v))
        assert sdpa_calls == []  # 64 x 64 scores: the explicit form
        with torch.no_grad():
            torch.testing.assert_close(kernels.attention(q, k, v), ref, rtol=2e-2, atol=2e-2)
        q64, k64, v64 = (torch.randn(2, 3, 16, 64, generator=g, dtype=torch.bfloat16) for _ in range(3))
        with torch.no_grad():  # inference's in-place form: the same numbers (a 1/8 scale rounds alike anywhere)
            assert torch.equal(kernels.attention(q64, k64, v64), torch.enable_grad()(kernels.attention)(q64, k64, v64))
        grid = torch.randn(1, 1, 257, 32)
        kernels.attention(grid, grid, grid)  # a 16 x 16 grid and a class token: still the explicit form
        assert sdpa_calls == []
        long = torch.randn(1, 1, 258, 32)
        kernels.attention(long, long, long)  # one token more: the fused kernel
        kernels.attention(q, k, v, dropout_p=0.1)  # dropout: SDPA's own
    kernels.attention(q, k, v)  # fp32: SDPA
    assert sdpa_calls == [1, 1, 1]
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-2, atol=2e-2)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=5e-2, atol=5e-2)


def test_training_config_key_is_checked_at_construction():
    from elt.jobs.speed import SpeedDefaults

    with pytest.raises(ConfigError, match="^callbacks.speed.cpu_kernels must be one of auto, aten, got 'mkl'$"):
        SpeedDefaults(cpu_kernels="mkl")


@needs_onednn
def test_fused_gelu_is_the_tanh_approximation():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(64, 96, generator=g), torch.randn(384, 96, generator=g), torch.randn(384, generator=g)
    fused = kernels._onednn(x, w, b, "gelu")
    torch.testing.assert_close(fused, _reference(x, w, b, True), rtol=1e-5, atol=1e-5)  # erf differs by ~5e-4


def test_training_sets_the_mode_and_gives_the_default_back():
    from types import SimpleNamespace

    from elt.jobs.speed import SpeedDefaults

    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    speed = SpeedDefaults(cpu_kernels="aten")
    speed.setup(trainer, object(), "fit")
    assert kernels.cpu_kernels() == "aten"
    speed.teardown(trainer, object(), "fit")
    assert kernels.cpu_kernels() == "auto"
