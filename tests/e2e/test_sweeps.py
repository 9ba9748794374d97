"""Multiruns through the real train.py: paths resolve before any job, a bad job does not end the sweep,
the depth group sweeps equal-depth (N, Lmax) pairs, and the old group name stops a sweep in one line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from support.config import ROOT

TINY = ["debug=fdr", "scale.width=32", "scale.heads=2", "scale.mlp_dim=64", "data.batch_size=16",
        "trainer.enable_progress_bar=false"]


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


def test_the_old_group_name_in_a_sweep_is_one_line_naming_the_new_one(tmp_path):
    res = train_py(tmp_path, "-m", "budget=2Nx4L,4Nx2L", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: budget=2Nx4L,4Nx2L: the config group budget is called depth; pass depth=2Nx4L,4Nx2L"]
    assert not (tmp_path / "sweep").exists()
