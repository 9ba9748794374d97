"""DiT-ELT through the real entry points: one training step, reloaded, sampled and evaluated."""
import torch

from elt.jobs.train import train
from elt.models import DiTELT
from elt.runtime.checkpoint import load_run
from support.evaluation import eval_cfg


def one_step_checkpoint(train_cfg) -> str:
    out = train(train_cfg("model=dit_elt", "N=1", "Lmax=2", "trainer.max_steps=1", "model.sampler.steps=2"))
    assert out["ckpt_path"] and torch.isfinite(torch.tensor(out["metrics"]["train/loss"]))
    return out["ckpt_path"]


def test_one_step_train_then_reload_and_sample(train_cfg):
    model, stored = load_run(one_step_checkpoint(train_cfg))
    assert isinstance(model, DiTELT) and stored.model.name == "dit_elt"
    assert int(model.ema.num_updates) == 1  # the EMA of the one optimiser step was checkpointed
    images = model.sample(torch.arange(2), loops=1, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 8, 8)


def test_one_step_train_then_evaluate_every_loop(train_cfg, eval_cache, tmp_path):
    from elt.jobs.evaluate import evaluate

    ckpt = one_step_checkpoint(train_cfg)
    result = evaluate(eval_cfg(ckpt, tmp_path / "eval", eval_cache, "eval.sampler={steps:2,kind:ddim}"))
    model_rows = [r for r in result["rows"] if r["row"] == "model"]
    assert [r["loops"] for r in model_rows] == [1, 2]
    assert all(r["gflops_per_sample"] > 0 for r in model_rows)
    assert (tmp_path / "eval" / "grids" / "L2.png").is_file()


def test_one_step_video_train_on_moving_digits_then_reload_and_sample(train_cfg, tmp_path):
    cache = tmp_path / "cache"  # the rendered videos go here, never into the repo's data/cache
    out = train(train_cfg("model=dit_elt", "data=moving_digits", "N=1", "Lmax=2",  # 2 steps, then validation
                          "data.batch_size=8", "model.sampler.steps=2", f"paths.cache_dir={cache}"))
    assert torch.isfinite(torch.tensor(out["metrics"]["train/loss"]))
    assert all(f"val/loss_L{l}" in out["metrics"] for l in (1, 2))
    assert list((cache / "data").glob("moving_digits_*.npz"))
    model, stored = load_run(out["ckpt_path"])
    assert stored.data.name == "moving_digits" and model.grid == (4, 6, 6)
    videos = model.sample(torch.arange(2), loops=2, generator=torch.Generator().manual_seed(0), kind="ddim")
    assert videos.shape == (2, 1, 4, 12, 12) and videos.min() >= 0 and videos.max() <= 1
