"""Every command of the mini-paper as a ``Task`` of the shared runner, with what each waits for."""
from __future__ import annotations

import sys
from pathlib import Path

from elt import repo_root
from elt.experiments.mini_paper.arms import ARMS, FAMILIES, SAMPLES_PER_CLASS, mode_settings
from elt.experiments.runner import Task


def run_dir(runs: Path, family: str, arm: str, seed: int) -> Path:
    return runs / family / arm / f"seed{seed}"


def plan(runs: Path, quick: bool, raw_root: str, samples_per_class: int = SAMPLES_PER_CLASS) -> list[Task]:
    """The tasks in the order ``run_tasks`` starts them when several are ready: stage one and the judge
    first, then every training, then the evaluations (an evaluation started before the last training
    would leave that training, the longest command, to run alone at the end). Each (family, arm, seed)
    has its own run directory and ``.done`` markers."""
    root, py = repo_root(), sys.executable
    families, seeds = mode_settings(quick)
    first, prepares, trains, evals = [], [], [], []
    for fam in families:
        kind, weights = FAMILIES[fam].stage_one, FAMILIES[fam].weights
        exp = f"experiment=mini/fashion_{fam}"
        first.append(Task(f"stage_one_{kind}", [py, "-m", "elt.experiments.stage_one", kind, "--raw-root", raw_root,
                                                "--out", str(root / "data" / "weights" / weights)],
                          runs / "markers" / f"stage_one_{kind}.done"))
        prepares.append(Task(f"prepare_{fam}", [py, str(root / "prepare.py"), exp, f"data.raw_root={raw_root}",
                                                f"hydra.run.dir={runs / fam / 'prepare'}", "prepare.num_workers=0",
                                                "prepare.batch_size=500"],
                             runs / "markers" / f"prepare_{fam}.done", [f"stage_one_{kind}"]))
        for name, arm in ARMS.items():
            for seed in seeds:
                d = run_dir(runs, fam, name, seed)
                trains.append(Task(f"train_{fam}_{name}_s{seed}", [
                    py, str(root / "train.py"), exp, *arm.overrides, f"seed={seed}", f"data.raw_root={raw_root}",
                    f"hydra.run.dir={d}", "ckpt_path=last"], d / ".train.done", [f"prepare_{fam}"]))
                evals.append(Task(f"eval_{fam}_{name}_s{seed}", [
                    py, str(root / "eval.py"), f"ckpt_path={d / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={d / 'eval'}",
                    f"eval.loops={arm.eval_loops}", f"eval.extra_loops={arm.extra_loops}", "eval.precision=32",
                    "eval.reconstruction_row=true", f"eval.samples_per_class={samples_per_class}",
                    f"data.raw_root={raw_root}", "eval.progress=false", "eval.grid_per_class=4"],
                    d / ".eval.done", [f"train_{fam}_{name}_s{seed}", "judge"]))
    # the judge and its reference statistics (shared by both families: the same images), cached once
    # while stage one trains, so that no evaluation trains it and the evaluations can run side by side
    judge = Task("judge", [py, "-m", "elt.jobs.warm", f"experiment=mini/fashion_{families[0]}",
                           f"data.raw_root={raw_root}"], runs / "markers" / "judge.done")
    return [*first, judge, *prepares, *trains, *evals]
