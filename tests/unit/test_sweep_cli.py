"""The command line around sweeps, without running one: paths resolve absolute, the depth group's
equal-depth pairs, the renamed group named in one line, failed jobs raised and summarised."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig

from elt.runtime import cli
from elt.runtime.config import ConfigError
from support.config import CONFIGS, compose_cfg

DEPTHS = sorted(p.stem for p in (Path(CONFIGS) / "depth").glob("*.yaml"))


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


@pytest.mark.parametrize("args, new", [
    (["budget=2Nx4L"], "depth=2Nx4L"),
    (["experiment=digits_dit", "+budget=1Nx8L"], "depth=1Nx8L"),
    (["-m", "budget=choice(8Nx1L,4Nx2L)"], "depth=choice(8Nx1L,4Nx2L)"),
])
def test_the_old_group_name_is_named(args, new):
    assert cli.renamed_group(args).endswith(f"the config group budget is called depth; pass {new}")


def test_a_removed_experiment_names_its_replacement():
    assert cli.renamed_group(["experiment=digits_dit_vanilla"]).endswith("pass experiment=digits_dit ilsd=off")


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
