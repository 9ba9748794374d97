"""Running a table: every row's train.py (a fixed run directory per row, ``ckpt_path=last``, so a rerun
resumes) and one eval.py per guidance scale, through the shared runner, then the rendered table.
``scale="smoke"`` runs the same commands for a few steps at tiny width on the embedded data."""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from elt import repo_root
from elt.evaluation.scoring import ADM_REFERENCE_HINT
from elt.evaluation.settings import loops_override
from elt.experiments.paper.rows import PaperRow, compose_row, eval_spec, rows_of
from elt.experiments.paper.tables import render_table
from elt.experiments.runner import Task, run_tasks
from elt.runtime.batch import apply_global_batch
from elt.runtime.config import ConfigError

SMOKE_TRAIN = ["trainer=cpu", "logger=csv", "scale.name=smoke", "scale.width=32", "scale.heads=2", "scale.mlp_dim=64",
               "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
               "trainer.enable_progress_bar=false", "callbacks.model_checkpoint.every_n_train_steps=2",
               "global_batch=16", "data.batch_size=8", "model.scheduler.warmup_steps=1"]
SMOKE_DATA = {"imagenet_maskgit": ["data=digits"], "imagenet_dit": ["data=digits"], "throughput": ["data=digits"],
              "ucf101": ["data=moving_digits", "data.canvas=10"]}
SMOKE_EVAL = ["eval.num_samples=null", "eval.samples_per_class=2", "eval.batch_size=20", "eval.grid_per_class=1",
              "eval.is_splits=1", "eval.reference_rows=false", "eval.progress=false"]
SMOKE_SAMPLER_STEPS = 2


def cfg_dir_name(scale: float) -> str:
    return f"cfg{scale:g}"


def protocol_overrides(spec: dict, eval_overrides=(), check_files: bool = True) -> list[str]:
    """The eval.py settings of the row's published protocol; a reference file it needs must exist
    (``--eval-override eval.reference_stats=...`` wins), checked before anything trains."""
    settings = dict(spec["eval"])
    given = [o.split("=", 1)[1] for o in eval_overrides if o.split("=", 1)[0].lstrip("+") == "eval.reference_stats"]
    ref = given[-1] if given else settings.get("reference_stats")
    if check_files and ref not in (None, "", "null") and not Path(str(ref)).expanduser().is_file():
        raise ConfigError(f"{spec['protocol']}: eval.reference_stats={ref} not found; {ADM_REFERENCE_HINT}, "
                          "or pass --eval-override eval.reference_stats=<file>")
    return [f"eval.{k}={'null' if v is None else v}" for k, v in settings.items()]


def ordered(rows: list[PaperRow], cfgs: dict) -> list[PaperRow]:
    """Trained rows first, evaluation-time rows (paper.train_row) after the run they read."""
    return sorted(rows, key=lambda r: OmegaConf.select(cfgs[r.config], "paper.train_row") is not None)


def tasks(table: str, runs: Path, scale: str = "paper", configs: list[str] | None = None, overrides=(),
          eval_overrides=(), check_files: bool = True) -> list[Task]:
    """The train.py / eval.py commands of a table, in order, each after the one before (a failure stops
    the rest); each resumes what it finds done. At paper scale every evaluation follows its row's published
    protocol (``paper.eval.protocol``), whose reference file must exist unless ``check_files`` is off."""
    if scale not in ("paper", "smoke"):
        raise ConfigError(f"--scale must be paper or smoke, got {scale!r}")
    root, py = repo_root(), sys.executable
    train_over = ([*SMOKE_DATA[table], *SMOKE_TRAIN] if scale == "smoke" else []) + list(overrides)
    rows = [r for r in rows_of(table) if r.config and (configs is None or r.config in configs)]
    cfgs = {r.config: compose_row(r.config, train_over) for r in rows}
    out: list[Task] = []

    def add(name: str, cmd: list[str]) -> None:
        out.append(Task(name, cmd, deps=[out[-1].name] if out else []))

    for r in ordered(rows, cfgs):
        cfg = cfgs[r.config]
        train_row = OmegaConf.select(cfg, "paper.train_row")
        run_dir = runs / (train_row or r.config)
        if not train_row:
            k = apply_global_batch(cfg)
            add(f"train_{r.config}", [py, str(root / "train.py"), f"experiment=paper/{r.config}", f"hydra.run.dir={run_dir}",
                                      "ckpt_path=last", *train_over,
                                      *([f"++trainer.accumulate_grad_batches={k}"] if k else [])])
        spec = eval_spec(cfg)
        protocol = protocol_overrides(spec, eval_overrides, check_files) if scale == "paper" else []
        steps = min(spec["steps"], SMOKE_SAMPLER_STEPS) if scale == "smoke" else spec["steps"]
        loops = loops_override(spec["loops"])
        for s in spec["cfg_scales"][:1] if scale == "smoke" else spec["cfg_scales"]:  # smoke: the first scale
            add(f"eval_{r.config}_{cfg_dir_name(s)}", [
                py, str(root / "eval.py"), f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                f"hydra.run.dir={runs / r.config / 'eval' / cfg_dir_name(s)}", f"eval.loops={loops}",
                f"eval.sampler={{steps:{steps},cfg_scale:{s:g}}}",
                *protocol,
                *(SMOKE_EVAL if scale == "smoke" else []), *eval_overrides])
    return out


def run_table(table: str, runs: Path, out: Path, scale: str = "paper", configs=None, overrides=(), eval_overrides=(),
              dry_run: bool = False) -> Path | None:
    todo = tasks(table, Path(runs), scale, configs, overrides, eval_overrides, check_files=not dry_run)
    if dry_run:
        for t in todo:
            print("+ " + " ".join(t.cmd[1:]), flush=True)
        return None
    run_tasks(todo)
    return render_table(table, Path(runs), Path(out))
