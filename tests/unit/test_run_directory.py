"""One run per run directory (elt.runtime.rundir): a live holder refuses, a dead one is taken over."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from elt.runtime import job_suffix, rundir
from elt.runtime.config import ConfigError
from elt.runtime.rundir import LOCK_FILE, RunLock
from support.config import compose_cfg

HOLD = ("import sys, time; from elt.runtime.rundir import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(120)")


def holder(directory):
    """Another process holding ``directory``'s lock, started and holding when this returns."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory), "train.py", "N=2"], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_run_refuses_a_second_and_a_killed_one_is_taken_over(tmp_path):
    run = tmp_path / "run"
    proc = holder(run)
    try:
        with pytest.raises(ConfigError, match=rf"{run} is in use by a live run \(pid {proc.pid} on "
                                              rf"{socket.gethostname()} since .*hydra.run.dir"):
            RunLock(run).acquire()
        record = (run / LOCK_FILE).read_bytes()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run / LOCK_FILE).read_bytes() == record  # the refused process changed nothing
    lock = RunLock(run).acquire()  # the kernel dropped the dead holder's flock; its record stayed
    assert "taking over the lock" in lock.taken_over and f"pid {proc.pid} " in lock.taken_over
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (run / LOCK_FILE).exists()


def test_without_flock_the_record_decides(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rundir.fcntl, "flock", no_flock)
    run = tmp_path / "run"
    run.mkdir()
    lock_file = run / LOCK_FILE

    def left_by(**record):
        lock_file.write_text(json.dumps({"started": time.time(), "command": "train.py", **record}))

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left_by(pid=int(dead.stdout), host=socket.gethostname())  # a dead pid on this host: taken over
    RunLock(run).acquire().release()
    left_by(pid=os.getppid(), host=socket.gethostname())  # alive on this host: refused
    with pytest.raises(ConfigError, match="in use by another run"):
        RunLock(run).acquire()
    left_by(pid=1, host="other-node", slurm_job_id="77")  # another host: refused, naming the file to delete
    with pytest.raises(ConfigError, match=f"delete {lock_file}"):
        RunLock(run).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # ... unless it is an earlier try of this requeued job
    RunLock(run).acquire().release()


def test_only_the_first_rank_of_a_launch_holds_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's DDP children, torchrun's other ranks share the dir
    assert rundir.hold(tmp_path / "run") is None and not (tmp_path / "run" / LOCK_FILE).exists()


@pytest.mark.parametrize("env, suffix", [
    ({}, ""), ({"SLURM_JOB_ID": "812"}, "_812"),
    ({"SLURM_JOB_ID": "815", "SLURM_ARRAY_JOB_ID": "812", "SLURM_ARRAY_TASK_ID": "3"}, "_812_3"),
])
def test_jobs_of_an_array_get_their_own_default_run_directory(monkeypatch, env, suffix):
    for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert job_suffix() == suffix
    hydra = compose_cfg("train", []).hydra
    assert hydra.run.dir.endswith(suffix) and hydra.sweep.dir.endswith(suffix)
    assert OmegaConf.to_container(hydra.sweep)["subdir"].startswith("${hydra.job.num}_")  # one per job of a sweep


def fill(run):
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("N: 2\n")
    (run / ".hydra" / "overrides.yaml").write_text("- N=2\n")
    (run / "train.log").write_text("the first run's lines\n")


def tree(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def rewrite_like_hydra(run):
    """What Hydra does to an existing run directory before the job runs, and the job's first log line."""
    (run / ".hydra" / "config.yaml").write_text("N: 3\n")
    (run / ".hydra" / "hydra.yaml").write_text("new\n")
    with open(run / "train.log", "a") as f:
        f.write("resuming from last.ckpt\n")
    (run / "other.log").write_text("")


def run_job(run, monkeypatch, start: bool = False, writes: bool = False):
    cfg = OmegaConf.create({"paths": {"output_dir": str(run)}})
    monkeypatch.setitem(rundir.SNAPSHOTS, os.path.realpath(run), rundir.Snapshot.take(run, ".hydra"))
    rewrite_like_hydra(run)
    with pytest.raises(ConfigError):
        with rundir.holding(cfg, refused=lambda e: isinstance(e, ConfigError)):
            if start:
                rundir.started()
            if writes:  # a job that never says it started, but wrote its results
                (run / "pareto").mkdir()
                (run / "pareto" / "points.json").write_text("{}")
            raise ConfigError("checkpoint does not fit this model")


def test_a_refused_run_puts_back_what_hydra_rewrote(tmp_path, monkeypatch):
    fill(run := tmp_path / "run")
    before = tree(run)
    run_job(run, monkeypatch)
    assert tree(run) == before  # .hydra/ byte for byte, the log cut back, the new log gone, no lock file


@pytest.mark.parametrize("how", ["started", "wrote"])
def test_a_run_that_did_work_keeps_its_config_and_log_lines(tmp_path, monkeypatch, how):
    fill(run := tmp_path / "run")
    run_job(run, monkeypatch, start=how == "started", writes=how == "wrote")
    assert (run / ".hydra" / "config.yaml").read_text() == "N: 3\n"
    assert (run / "train.log").read_text().endswith("resuming from last.ckpt\n")
