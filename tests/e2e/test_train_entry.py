"""The real train() on shrunk configs: one step per model config and per experiment."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elt.runtime.checkpoint import load_run
from elt.jobs.train import train
from elt.runtime import precision
from support.config import CONFIGS, ROOT

MODELS = sorted(p.stem for p in (Path(CONFIGS) / "model").glob("*.yaml"))
# experiments on the embedded data run here; the real-data ones (ucf101_*) are shape-checked in test_video.py
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIGS) / "experiment").glob("*.yaml") if not p.stem.startswith("ucf101"))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("ilsd", ["on", "off"])
def test_one_step_train_writes_a_reloadable_checkpoint(train_cfg, model, ilsd):
    cfg = train_cfg(f"model={model}", f"ilsd={ilsd}", "N=1", "Lmax=2")
    out = train(cfg)
    assert out["ckpt_path"] and Path(out["ckpt_path"]).is_file()
    assert all(f"val/loss_L{l}" in out["metrics"] for l in (1, 2))  # the any-time signal
    model_a = torch.load(out["ckpt_path"], weights_only=False)
    assert model_a["elt_config"]["N"] == 1 and model_a["elt_config"]["model"]["name"] == model
    reloaded, run_cfg = load_run(out["ckpt_path"])
    assert run_cfg.run_name == cfg.run_name
    labels = torch.arange(3)
    kw = dict(loops=2, steps=2)
    a = reloaded.sample(labels, generator=torch.Generator().manual_seed(0), **kw)
    b = reloaded.sample(labels, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a, b) and a.shape[0] == 3


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_one_step(train_cfg, experiment):
    cfg = train_cfg(f"experiment={experiment}")
    assert cfg.model.name.split("_")[0] in experiment  # the experiment selects its own model family
    assert cfg.N >= 1 and cfg.Lmax >= 1
    with_overrides = train_cfg(f"experiment={experiment}", "trainer.max_steps=1", "scale.width=32", "scale.heads=2",
                               "scale.mlp_dim=64", "data.batch_size=8")
    assert cfg.run_name
    out = train(with_overrides)
    assert out["ckpt_path"]


def test_last_checkpoint_holds_the_final_step(train_cfg):
    out = train(train_cfg("trainer.max_steps=3", "callbacks.model_checkpoint.every_n_train_steps=2"))
    assert torch.load(out["ckpt_path"], weights_only=False)["global_step"] == 3


@pytest.mark.parametrize("override", ["logger=none", "debug=fdr"])
def test_runs_without_loggers(train_cfg, override):
    assert train(train_cfg(override))["metrics"]


def test_resume_continues_from_checkpoint(train_cfg):
    out = train(train_cfg("trainer.max_steps=2"))
    resumed = train(train_cfg("trainer.max_steps=3", f"ckpt_path={out['ckpt_path']}"))
    assert torch.load(resumed["ckpt_path"], weights_only=False)["global_step"] == 3


def test_bad_checkpoints_fail_with_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_run(tmp_path / "missing.ckpt")
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.ckpt"):
        load_run(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="elt_config"):
        load_run(foreign)


def test_maskgit_trains_on_moving_digits_through_the_entry_point(train_cfg):
    out = train(train_cfg("data=moving_digits", "data.frames=2", "data.canvas=9", "data.batch_size=4"))
    assert {"val/loss_L1", "val/loss_L2", "val/loss_L3", "val/loss_L4"} <= set(out["metrics"])


def test_train_resolves_auto_before_building_the_trainer(train_cfg, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    out = train(train_cfg("trainer.precision=auto", "trainer.max_steps=1"))
    stored = torch.load(out["ckpt_path"], weights_only=False)["elt_config"]
    assert stored["trainer"]["precision"] == "32-true"  # the checkpoint records what was used


def test_cli_bad_value_is_one_line_and_nonzero_exit(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "ilsd.Lmin=4", "Lmax=4", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert lines[-1].startswith("error: ilsd.Lmin must be < Lmax"), proc.stderr
    assert not (tmp_path / "checkpoints").exists()
