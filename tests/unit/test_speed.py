"""Throughput / MFU logging and the GPU-default settings (elt.jobs.speed, elt.runtime.peak)."""
import functools
import time

import lightning as L
import pytest
import torch

from elt.core.flops import tokens_per_sample, training_flops_per_sample
from elt.core.ilsd import ILSDCallback
from elt.core.optim import with_fused
from elt.jobs.speed import SpeedDefaults, ThroughputMonitor
from elt.runtime.config import ConfigError
from elt.runtime.peak import GPU_PEAK_TFLOPS, gpu_entry, peak_flops
from support.models import digits_batch, random_dit, tiny_maskgit


def counted_training_flops(model, batch) -> float:
    """FLOPs torch's counter sees in one ILSD training step (forward and backward), per sample."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model.train().ilsd_lambda = 0.5
    # the math backend: the counter does not see the fused CPU attention kernel's matmuls
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss, _ = model.loss(batch)
        loss.backward()
    return counter.get_total_flops() / batch["label"].shape[0]


@pytest.mark.parametrize("family", ["dit", "maskgit"])
@pytest.mark.parametrize("ilsd", [True, False], ids=["ilsd", "plain"])
def test_training_flops_agree_with_the_flop_counter(family, ilsd):
    build = random_dit if family == "dit" else tiny_maskgit
    model = build(N=2, Lmax=3, ilsd=ilsd)
    counted = counted_training_flops(model, digits_batch(4))
    # the counter skips the input gradients nobody needs (patch / time embedding inputs): < 2% here
    assert training_flops_per_sample(model) == pytest.approx(counted, rel=0.02)
    if ilsd:  # the student's extra head is counted
        assert training_flops_per_sample(model) > 3 * model.flops_per_eval(model.Lmax)
    assert tokens_per_sample(model) == (16 if family == "dit" else 64)


class Recorder(L.Callback):
    def __init__(self):
        self.logged, self.ends = [], []

    def on_train_batch_end(self, trainer, pl_module, *a):
        self.ends.append(time.perf_counter())
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("perf/")})


def test_logged_flops_per_second_match_the_counter_and_the_wall_clock():
    from elt.data import DigitsDataModule

    model = random_dit(N=1, Lmax=2)
    per_sample = counted_training_flops(random_dit(N=1, Lmax=2), digits_batch(16))
    monitor, rec = ThroughputMonitor(every_n_steps=2), Recorder()
    trainer = L.Trainer(max_steps=6, logger=False, callbacks=[ILSDCallback(), monitor, rec], enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, accelerator="cpu", enable_model_summary=False)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16))
    assert rec.logged[0] == {} and set(rec.logged[-1]) == {f"perf/{k}" for k in ThroughputMonitor.KEYS}
    got = rec.logged[-1]
    assert got["perf/tflops"] * 1e12 / got["perf/samples_per_s"] == pytest.approx(per_sample, rel=0.02)
    assert got["perf/tokens_per_s"] == pytest.approx(got["perf/samples_per_s"] * 16)
    assert got["perf/mfu"] == pytest.approx(got["perf/tflops"] * 1e12 / monitor.peak)
    assert 0.0 <= got["perf/data_wait"] < 1.0
    # the last window: 2 steps x 16 samples over the time from step 4's end to step 6's end
    window = rec.ends[-1] - rec.ends[-3]  # the last two steps, batch end to batch end
    # 15%: the two callbacks read the clock a few calls apart, which a loaded machine stretches; a wrong
    # window (one step, or three) would be 2x or 0.67x off
    assert got["perf/samples_per_s"] == pytest.approx(32 / window, rel=0.15)
    assert monitor.peak_source.startswith("measured fp32 GEMM") and monitor.peak > 0


def test_data_wait_share_sees_a_slow_loader():
    from elt.data import DigitsDataModule

    class SlowDigits(DigitsDataModule):
        def train_dataloader(self):
            def slow(loader):
                for b in loader:
                    time.sleep(0.2)
                    yield b
            loader = super().train_dataloader()
            return type("Slow", (), {"__iter__": lambda s: slow(loader), "__len__": lambda s: len(loader)})()

    model = tiny_maskgit(N=1, Lmax=1, ilsd=False)
    monitor, rec = ThroughputMonitor(every_n_steps=2), Recorder()
    trainer = L.Trainer(max_steps=5, logger=False, callbacks=[monitor, rec], enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, accelerator="cpu", enable_model_summary=False)
    trainer.fit(model, datamodule=SlowDigits(batch_size=4))
    got = rec.logged[-1]  # the window of steps 3-4: 8 samples, two 0.2 s sleeps in the gaps before its batches
    wait_s = got["perf/data_wait"] * 8 / got["perf/samples_per_s"]
    assert 0.4 <= wait_s < 0.6


def test_peak_table_and_override():
    assert gpu_entry("NVIDIA H100 PCIe") is GPU_PEAK_TFLOPS["H100 PCIe"]
    assert gpu_entry("NVIDIA H100 80GB HBM3") is GPU_PEAK_TFLOPS["H100"]
    assert gpu_entry("NVIDIA L40S") is GPU_PEAK_TFLOPS["L40S"] and gpu_entry("NVIDIA L4") is GPU_PEAK_TFLOPS["L4"]
    assert gpu_entry("NVIDIA GeForce RTX 4090")["bf16"] == 165.2 and gpu_entry("Tesla V100") is None
    assert peak_flops(torch.device("cpu"), "32", 12.5) == (12.5e12, "config")
    with pytest.raises(ConfigError, match="peak_tflops"):
        peak_flops(torch.device("cpu"), "32", 0)
    with pytest.raises(ConfigError, match="every_n_steps"):
        ThroughputMonitor(every_n_steps=0)


def test_fused_adamw_is_added_only_where_it_applies():
    adamw = functools.partial(torch.optim.AdamW, lr=1e-3)
    assert with_fused(adamw, True).keywords == {"lr": 1e-3, "fused": True}
    assert with_fused(adamw, False) is adamw
    assert with_fused(None, True).keywords == {"fused": True}
    chosen = functools.partial(torch.optim.AdamW, foreach=True)
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    assert with_fused(chosen, True) is chosen and with_fused(sgd, True) is sgd
    p = torch.nn.Parameter(torch.ones(3))
    opt = with_fused(adamw, True)([p])  # fused AdamW runs on CPUs too (torch >= 2.4)
    p.grad = torch.ones(3)
    opt.step()
    assert opt.param_groups[0]["fused"] and p.detach().lt(1).all()


def test_speed_defaults_check_their_keys_and_leave_cpu_runs_alone():
    with pytest.raises(ConfigError, match="sdpa"):
        SpeedDefaults(sdpa="fastest")
    with pytest.raises(ConfigError, match="fused_adamw"):
        SpeedDefaults(fused_adamw="yes")
    model = tiny_maskgit(N=1, Lmax=1, ilsd=False)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, accelerator="cpu", enable_model_summary=False)
    before = torch.get_float32_matmul_precision()
    try:
        SpeedDefaults(tf32=False).setup(trainer, model, "fit")
        assert torch.get_float32_matmul_precision() == "highest"
        assert model.optimizer_factory is None or "fused" not in getattr(model.optimizer_factory, "keywords", {})
        SpeedDefaults(fused_adamw=True).setup(trainer, model, "fit")
        assert model.optimizer_factory.keywords == {"fused": True}
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_evaluation_logs_images_per_second_per_loop_count():
    from elt.evaluation.tables import log_to_loggers

    class Logger:
        def __init__(self):
            self.calls = []

        def log_hyperparams(self, params):
            pass

        def log_metrics(self, metrics, step):
            self.calls.append((step, metrics))

        def finalize(self, status):
            pass

    rows = [{"name": f"L{L}", "row": "model", "loops": L, "num_samples": 8, "gflops_per_sample": 1.0 * L,
             "wall_s_per_sample": 0.25 * L, "fid": 10.0 / L} for L in (1, 2)]
    lg = Logger()
    log_to_loggers([lg], rows, {"hparams": {}}, {}, {})
    assert [(s, m["eval/images_per_s"]) for s, m in lg.calls] == [(1, 4.0), (2, 2.0)]


def test_measuring_the_cpu_peak_leaves_the_global_rng_alone():
    from elt.runtime.peak import measured_gemm_tflops

    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    assert measured_gemm_tflops("cpu", torch.float32, 64, 1, -1) > 0  # a fresh cache key: it measures
    torch.testing.assert_close(torch.rand(3), expected)
