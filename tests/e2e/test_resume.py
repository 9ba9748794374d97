"""Runs that are interrupted, resumed, extended or pointed at the wrong files lose nothing."""
from __future__ import annotations

import csv
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elt.runtime.cli import run_cli
from elt.jobs.train import train
from support.checkpoints import assert_same_weights, weights
from support.config import ROOT, child_env, in_dir

# 4 batches an epoch, so steps 3 and 5 are mid-epoch (the second one in the second epoch)
SHORT = ["trainer.limit_train_batches=4", "trainer.val_check_interval=4", "logger=csv"]


@pytest.mark.parametrize("model", ["maskgit_elt", "dit_elt"])
def test_sigterm_saves_and_exits_nonzero_and_resume_is_bit_exact(train_cfg, tmp_path, model):
    common = [f"model={model}", "trainer.max_steps=6", "callbacks.model_checkpoint.every_n_train_steps=100", *SHORT]
    reference = train(in_dir(train_cfg(*common), tmp_path / "uninterrupted"))

    killed = in_dir(train_cfg(*common, "+callbacks.kill._target_=support.callbacks.KillAt", "+callbacks.kill.step=5"),
                    tmp_path / "preempted")
    with pytest.raises(SystemExit) as exc:
        train(killed)
    assert exc.value.code == 128 + signal.SIGTERM  # the scheduler sees a failure
    last = tmp_path / "preempted" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 5  # saved at the step it was told

    resumed = train(in_dir(train_cfg(*common, "ckpt_path=last"), tmp_path / "preempted"))  # the same command
    assert torch.load(resumed["ckpt_path"], weights_only=False)["global_step"] == 6
    assert_same_weights(weights(reference["ckpt_path"]), weights(resumed["ckpt_path"]))


def test_sigterm_before_training_still_saves_and_exits_nonzero_and_handlers_are_restored(train_cfg):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc:  # during the sanity check: Lightning's handler was in place
        train(train_cfg("trainer.num_sanity_val_steps=1", "+callbacks.kill._target_=support.callbacks.KillAt",
                        "+callbacks.kill.step=0"))
    assert exc.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before  # nothing of the run's handlers left behind
    train(train_cfg("trainer.max_steps=3", "ckpt_path=last"))
    assert signal.getsignal(signal.SIGTERM) == before


def test_resume_from_a_periodic_checkpoint_after_kill_9_is_bit_exact(train_cfg, tmp_path):
    """kill -9 leaves the newest periodic checkpoint: resuming from it (mid-epoch) ends where the
    uninterrupted run ends."""
    common = ["trainer.max_steps=6", "callbacks.model_checkpoint.every_n_train_steps=3", *SHORT]
    reference = train(in_dir(train_cfg(*common), tmp_path / "a"))
    step3 = tmp_path / "a" / "checkpoints" / "step000003.ckpt"
    assert step3.is_file()
    resumed = train(in_dir(train_cfg(*common, f"ckpt_path={step3}"), tmp_path / "b"))
    assert_same_weights(weights(reference["ckpt_path"]), weights(resumed["ckpt_path"]))
    uninterrupted_other_seed = train(in_dir(train_cfg(*common, "seed=1"), tmp_path / "c"))
    with pytest.raises(AssertionError):  # the comparison can fail: another seed gives other weights
        assert_same_weights(weights(reference["ckpt_path"]), weights(uninterrupted_other_seed["ckpt_path"]))


def test_sigusr1_through_the_cli_saves_and_exits_nonzero(tmp_path):
    env = child_env()
    cmd = [sys.executable, "train.py", "scale.width=32", "scale.heads=2", "scale.mlp_dim=64", "data.batch_size=16",
           "trainer.max_steps=50", "trainer.val_check_interval=50", "trainer.enable_progress_bar=false",
           "+callbacks.kill._target_=support.callbacks.KillAt", "+callbacks.kill.step=2", "+callbacks.kill.sig=SIGUSR1",
           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 128 + signal.SIGUSR1, p.stderr[-2000:]
    assert "SIGUSR1 at step 2: saved" in p.stderr and "ckpt_path=last" in p.stderr
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2


def test_the_newest_k_step_checkpoints_are_kept(train_cfg):
    out = train(train_cfg("trainer.max_steps=5", "callbacks.model_checkpoint.save_top_k=2"))
    names = sorted(p.name for p in Path(out["ckpt_path"]).parent.glob("*.ckpt"))
    assert names == ["last.ckpt", "step000004.ckpt", "step000005.ckpt"]


def test_debug_runs_never_write_into_a_trained_run(train_cfg, capsys):
    out = train(train_cfg("trainer.max_steps=2"))
    before = Path(out["ckpt_path"]).read_bytes()
    with pytest.raises(SystemExit) as exc:
        run_cli(train, train_cfg("debug=fdr"))  # the same run directory
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "debug=fdr refused" in err[0] and "trained run" in err[0]
    assert Path(out["ckpt_path"]).read_bytes() == before


def test_fast_dev_run_writes_no_checkpoint(train_cfg, tmp_path):
    out = train(train_cfg("debug=fdr"))
    assert out["ckpt_path"] is None
    assert not list((tmp_path / "train").rglob("*.ckpt"))


def read_steps(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return sorted({int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")})


def test_resuming_appends_to_the_metrics_log_and_stores_the_new_config(train_cfg, tmp_path, caplog):
    common = ["logger=csv", "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=100"]
    train(train_cfg(*common, "trainer.max_steps=3"))
    metrics = tmp_path / "train" / "csv" / "metrics.csv"
    first = read_steps(metrics)
    assert first and max(first) <= 2
    with caplog.at_level("WARNING"):
        out = train(train_cfg(*common, "trainer.max_steps=6", "ckpt_path=last"))  # extend the finished run
    steps = read_steps(metrics)
    assert set(first) <= set(steps) and max(steps) > max(first)  # old rows kept, new ones appended
    stored = torch.load(out["ckpt_path"], weights_only=False)["elt_config"]
    assert stored["trainer"]["max_steps"] == 6  # the config of the run that wrote it
    assert any("max_steps 3 -> 6" in r.getMessage() and "λ 0.00 -> 0.50" in r.getMessage() for r in caplog.records)


# ---- bad input: one line, exit 2, before any work, nothing written changed ------------------------
def one_line_error(capsys, cfg, job=train) -> str:
    with pytest.raises(SystemExit) as exc:
        run_cli(job, cfg)
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("content", [b"\x93NUMPY random bytes" * 50, None])
def test_unreadable_checkpoints_are_one_line(train_cfg, tmp_path, capsys, content):
    bad = tmp_path / "bad.ckpt"
    if content is None:  # truncated: a real checkpoint cut in half
        good = Path(train(in_dir(train_cfg("trainer.max_steps=1"), tmp_path / "src"))["ckpt_path"]).read_bytes()
        content = good[: len(good) // 2]
    bad.write_bytes(content)
    line = one_line_error(capsys, in_dir(train_cfg(f"ckpt_path={bad}"), tmp_path / "dst"))
    assert "bad.ckpt" in line and "unreadable" in line and "weights_only" not in line
    assert not (tmp_path / "dst" / "checkpoints").exists() or not list((tmp_path / "dst" / "checkpoints").iterdir())


def test_resuming_with_another_N_names_the_difference(train_cfg, tmp_path, capsys):
    out = train(train_cfg("N=2", "trainer.max_steps=1"))
    line = one_line_error(capsys, in_dir(train_cfg("N=3", f"ckpt_path={out['ckpt_path']}"), tmp_path / "other"))
    assert "does not fit this model" in line and "N: 2 -> 3" in line


@pytest.mark.parametrize("override, expected", [
    ("ckpt_path=/nonexistent/run/last.ckpt", "no such file"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval must be"),
    ("data.batch_size=5000", "data.batch_size (5000) is larger than the training split"),
])
def test_bad_train_inputs_fail_before_training(train_cfg, tmp_path, capsys, override, expected):
    line = one_line_error(capsys, train_cfg(override))
    assert expected in line
    assert not list((tmp_path / "train").rglob("*.ckpt"))


def test_a_fresh_run_refuses_a_trained_run_directory_and_an_optimizer_change_on_resume(train_cfg, capsys):
    out = train(train_cfg("trainer.max_steps=1"))
    before = Path(out["ckpt_path"]).read_bytes()
    line = one_line_error(capsys, train_cfg("trainer.max_steps=1"))  # same directory, no ckpt_path
    assert "holds a trained run" in line and "ckpt_path=last" in line
    line = one_line_error(capsys, train_cfg("trainer.max_steps=2", "ckpt_path=last", "model.optimizer.lr=0.5"))
    assert "model.optimizer.lr" in line and "0.5" in line
    assert Path(out["ckpt_path"]).read_bytes() == before


def test_an_unwritable_checkpoint_dir_fails_at_start(train_cfg, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    line = one_line_error(capsys, train_cfg(f"callbacks.model_checkpoint.dirpath={blocker / 'ckpts'}"))
    assert "cannot write to" in line and "ckpts" in line
    assert not list((tmp_path / "train").rglob("*.ckpt")) and not (tmp_path / "train" / "csv").exists()
