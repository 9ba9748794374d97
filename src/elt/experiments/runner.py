"""The one subprocess runner of the experiments: the paper tables and the mini-paper hand it their
commands as ``Task``s and it runs them, ``jobs`` at a time, each after its dependencies."""
from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from elt import repo_root


@dataclass
class Task:
    """One command. ``done`` is the marker written (holding the wall seconds) when it succeeded, so a
    rerun skips it; None for a command that resumes by itself (train.py's ``ckpt_path=last``, eval.py's
    row cache) and so runs every time."""

    name: str
    cmd: list[str]
    done: Path | None = None
    deps: list[str] = field(default_factory=list)

    def is_done(self) -> bool:
        return self.done is not None and self.done.is_file()


def startable(todo: dict[str, Task], finished: set[str], free: int) -> list[Task]:
    """The scheduling rule (shared by ``run_tasks`` and the mini-paper's budget simulation): the first
    ``free`` tasks, in plan order, whose dependencies have all finished."""
    return [t for t in todo.values() if all(d in finished for d in t.deps)][:max(0, free)]


def run_tasks(tasks: list[Task], jobs: int = 1, log_dir: Path | None = None, env: dict | None = None) -> None:
    """Runs what is not done, at most ``jobs`` at a time, each after its dependencies. A failed
    command stops only what needs it: the others go on, so a late failure costs no finished work; at
    the end a failure exits with the names of what failed and what it blocked. Each command's output
    goes to ``<log_dir>/<name>.log``, or to this terminal without a ``log_dir``; ``env`` adds variables."""
    env = {**os.environ, "ELT_ROOT": str(repo_root()), **(env or {})}
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    todo = {t.name: t for t in tasks if not t.is_done()}
    finished = {t.name for t in tasks if t.is_done()}
    failed: list[str] = []

    def launch(t: Task) -> tuple[Task, int, float]:
        start = time.time()
        if log_dir is None:
            rc = subprocess.run(t.cmd, env=env).returncode
        else:
            with open(Path(log_dir) / f"{t.name}.log", "w") as log:
                rc = subprocess.run(t.cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        return t, rc, time.time() - start

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        running = {}
        while todo or running:
            for t in startable(todo, finished, jobs - len(running)):
                print(f"+ [{len(finished) + len(failed) + len(running) + 1}/{len(tasks)}] {t.name}: {' '.join(t.cmd[1:])}",
                      flush=True)
                running[pool.submit(launch, t)] = t
                del todo[t.name]
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                t, rc, secs = fut.result()
                del running[fut]
                if rc:
                    failed.append(t.name)
                    where = f"see {Path(log_dir) / (t.name + '.log')}" if log_dir is not None else "output above"
                    print(f"error: {t.name} exited {rc}; {where}", flush=True)
                    continue
                if t.done is not None:
                    t.done.parent.mkdir(parents=True, exist_ok=True)
                    t.done.write_text(f"{secs:.1f}\n")
                finished.add(t.name)
                print(f"  {t.name} done in {secs:.0f} s", flush=True)
    if failed:
        logs = f" (logs in {log_dir})" if log_dir is not None else ""
        blocked = f"; not started, as they need it: {', '.join(todo)}" if todo else ""
        raise SystemExit(f"error: {', '.join(failed)} failed{logs}{blocked}; rerun to resume")
