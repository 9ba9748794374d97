"""train.py as processes: a run refused by a live holder of its directory, or refused at resume, leaves
the existing run directory byte-identical, ``.hydra/`` and the log included."""
from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support.config import ROOT, child_env

TINY = ["N=2", "Lmax=2", "scale.width=32", "scale.heads=2", "scale.mlp_dim=64", "data.batch_size=16",
        "trainer.max_steps=1", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false"]


def train_py(run: Path, *overrides: str):
    args = [sys.executable, str(ROOT / "train.py"), *TINY, *overrides, f"hydra.run.dir={run}",
            f"paths.cache_dir={run.parent / 'cache'}"]
    return subprocess.run(args, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)


def tree(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def refused(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


@pytest.mark.slow  # three train.py processes
def test_refused_runs_leave_the_run_directory_byte_identical(tmp_path):
    run = tmp_path / "run"
    first = train_py(run)
    assert first.returncode == 0, first.stderr[-2000:]
    before = tree(run)
    assert ".hydra/config.yaml" in before and "train.log" in before and "checkpoints/last.ckpt" in before

    line = refused(train_py(run, "N=3", "ckpt_path=last"))  # the checkpoint does not fit: refused at resume
    assert "does not fit this model" in line and "N: 2 -> 3" in line
    assert tree(run) == before

    hold = ("import sys, time; from elt.runtime.rundir import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(300)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run)], env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        locked = tree(run)
        line = refused(train_py(run, "ckpt_path=last", "trainer.max_steps=2"))
        assert f"{run} is in use by a live run (pid {holder.pid}" in line
        assert tree(run) == locked  # Hydra did not even rewrite .hydra/
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    resumed = train_py(run, "ckpt_path=last", "trainer.max_steps=2")  # the killed holder's lock is taken over
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    taken = [line for line in (run / "train.log").read_text().splitlines() if "taking over the lock" in line]
    assert len(taken) == 1 and f"pid {holder.pid} " in taken[0]
    assert not (run / ".run.lock").exists()
