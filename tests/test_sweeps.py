"""Multiruns through the real train.py: paths resolve before any job, a bad job does not end the sweep,
and the depth group sweeps equal-depth (N, Lmax) pairs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from conftest import CONFIGS, ROOT, compose_cfg
from elt.runtime import cli
from elt.runtime.config import ConfigError

TINY = ["debug=fdr", "scale.width=32", "scale.heads=2", "scale.mlp_dim=64", "data.batch_size=16",
        "trainer.enable_progress_bar=false"]
DEPTHS = sorted(p.stem for p in (Path(CONFIGS) / "depth").glob("*.yaml"))


def train_py(tmp_path: Path, *overrides: str, elt_root: str | None = "tmp", cwd: Path = ROOT):
    """Run train.py as a user would; ELT_ROOT is tmp_path/root, or unset with elt_root=None."""
    env = {k: v for k, v in os.environ.items() if k not in ("ELT_ROOT", "ELT_DEBUG", "HYDRA_FULL_ERROR")}
    if elt_root is not None:
        env["ELT_ROOT"] = str(tmp_path / "root")
    args = [sys.executable, str(ROOT / "train.py"), *overrides, f"paths.cache_dir={tmp_path / 'cache'}"]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def job_dirs(sweep_dir: Path) -> dict[int, Path]:
    return {int(d.name.split("_")[0]): d for d in sweep_dir.iterdir() if d.is_dir()}


def test_equal_depth_sweep_runs_every_job(tmp_path):
    sweep = tmp_path / "sweep"
    res = train_py(tmp_path, "-m", "depth=2Nx4L,4Nx2L", *TINY, f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    dirs = job_dirs(sweep)
    assert sorted(dirs) == [0, 1]
    pairs = [(c.N, c.Lmax) for c in (OmegaConf.load(dirs[i] / ".hydra" / "config.yaml") for i in (0, 1))]
    assert pairs == [(2, 4), (4, 2)] and {n * l for n, l in pairs} == {8}
    assert not list(sweep.glob("*/error.txt"))


def test_bad_job_is_reported_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    res = train_py(tmp_path, "-m", "N=2,0,1", "Lmax=2", *TINY, f"hydra.sweep.dir={sweep}")
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.splitlines()
    job_line = next(line for line in lines if line.startswith("error: sweep job #1 (N=0 "))
    assert job_line.endswith("N must be an integer >= 1, got 0")
    assert lines[-1] == "error: 1 of 3 sweep jobs failed: #1 (N=0): N must be an integer >= 1, got 0"
    assert "Traceback" not in res.stderr
    dirs = job_dirs(sweep)
    assert sorted(dirs) == [0, 1, 2]
    assert (dirs[1] / "error.txt").read_text().strip() == job_line
    for i in (0, 2):  # the jobs around the bad one trained their one step
        assert not (dirs[i] / "error.txt").exists()
        assert "MaskGITELT N=" in (dirs[i] / "train.log").read_text()


@pytest.mark.parametrize("elt_root", ["tmp", None])
def test_multirun_resolves_default_paths_with_and_without_elt_root(tmp_path, elt_root):
    """No hydra.sweep.dir override: the sweep dir comes from paths.log_dir, which once failed to resolve
    ('HydraConfig was not set') before any job ran. Without ELT_ROOT the paths are under the launch dir."""
    launch_dir = tmp_path / "launch"
    launch_dir.mkdir()
    res = train_py(tmp_path, "-m", "N=0", elt_root=elt_root, cwd=launch_dir)
    assert "HydraConfig was not set" not in res.stderr
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.splitlines()[-1].startswith("error: 1 of 1 sweep jobs failed: #0 (N=0")
    root = tmp_path / "root" if elt_root else launch_dir
    assert len(list((root / "logs" / "train" / "multiruns").glob("*/*/error.txt"))) == 1


def test_single_run_keeps_one_line_and_exit_2(tmp_path):
    launch_dir = tmp_path / "launch"
    launch_dir.mkdir()
    res = train_py(tmp_path, "N=0", elt_root=None, cwd=launch_dir)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: N must be an integer >= 1, got 0"]
    assert list((launch_dir / "logs" / "train" / "runs").iterdir())  # the run dir is under the launch dir
    assert not list(launch_dir.rglob("error.txt"))


def test_root_dir_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ELT_ROOT", "rel/root")
    assert compose_cfg("train", []).paths.log_dir == str(tmp_path / "rel" / "root" / "logs")
    monkeypatch.delenv("ELT_ROOT")
    assert compose_cfg("train", []).paths.root_dir == str(tmp_path)


@pytest.mark.parametrize("depth", DEPTHS)
def test_depth_is_an_equal_depth_pair_that_beats_the_experiment(depth):
    cfg = compose_cfg("train", ["experiment=digits_dit", f"depth={depth}"])  # digits_dit sets N=2 Lmax=4
    assert cfg.N * cfg.Lmax == 8 and depth == f"{cfg.N}Nx{cfg.Lmax}L"


def test_the_old_group_name_in_a_sweep_is_one_line_naming_the_new_one(tmp_path):
    res = train_py(tmp_path, "-m", "budget=2Nx4L,4Nx2L", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: budget=2Nx4L,4Nx2L: the config group budget is called depth; pass depth=2Nx4L,4Nx2L"]
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("args, new", [
    (["budget=2Nx4L"], "depth=2Nx4L"),
    (["experiment=digits_dit", "+budget=1Nx8L"], "depth=1Nx8L"),
    (["-m", "budget=choice(8Nx1L,4Nx2L)"], "depth=choice(8Nx1L,4Nx2L)"),
])
def test_the_old_group_name_is_named(args, new):
    assert cli.renamed_group(args).endswith(f"the config group budget is called depth; pass {new}")


@pytest.mark.parametrize("args", [["budget.gflops=2"], ["budget={gflops: 2, seconds: null}"], ["depth=2Nx4L"], []])
def test_sample_budgets_and_the_new_name_pass(args):
    assert cli.renamed_group(args) is None


def test_out_of_process_launcher_gets_the_failure_raised(tmp_path, monkeypatch):
    """Jobs run elsewhere (joblib, submitit): returning would read as success there, so the job raises,
    after leaving its one line in error.txt."""
    monkeypatch.setattr(cli, "SWEEP", cli.Sweep())
    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)  # later tests: no multirun
    cfg = compose_cfg("train", ["hydra.mode=MULTIRUN", "hydra.launcher._target_=some.RemoteLauncher",
                                "hydra.job.num=3", f"hydra.runtime.output_dir={tmp_path}", "N=0"])

    def job(cfg):
        raise ConfigError("N must be an integer >= 1, got 0")

    with pytest.raises(cli.SweepJobError, match=r"^error: sweep job #3 \(N=0\): N must be"):
        cli.run_cli(job, cfg)
    assert (tmp_path / "error.txt").read_text().startswith("error: sweep job #3 (N=0)")


def test_summary_names_failed_jobs_by_what_varies():
    sweep = cli.Sweep([cli.SweepJob(0, ["N=1", "debug=fdr"]), cli.SweepJob(1, ["N=0", "debug=fdr"], "bad N"),
                       cli.SweepJob(2, ["N=-1", "debug=fdr"], "bad N again")])
    assert sweep.summary() == "error: 2 of 3 sweep jobs failed: #1 (N=0): bad N; #2 (N=-1): bad N again"
    assert cli.Sweep([cli.SweepJob(0, ["N=1"])]).summary() is None
