"""Loggers. A CSV logger that appends: resuming or rerunning in a run directory keeps the rows already
there (Lightning's deletes ``metrics.csv`` when its directory is not empty, even if the new run
then fails at step 2). W&B: every run of a study in one group, with the columns runs differ in.
"""
from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf

from elt.runtime.files import atomic_path, naming


class AppendingExperimentWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Adopt the existing header instead of deleting the file (new keys widen it later)."""
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        """Widening the header rewrites the file: into a sibling, then a rename, so a crash
        mid-rewrite leaves the old rows."""
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)

    def save(self) -> None:
        """Lightning's append; a failed write (a full disk) names ``metrics.csv``, whose finished rows stay."""
        try:
            super().save()
        except OSError as e:
            named = naming(e, self.metrics_file_path)
            if named is e:
                raise
            raise named from e


class AppendingCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


# ---- W&B: one group per study, config columns to filter and group by ---------------------------------
def ilsd_active(ilsd: bool, Lmax: int) -> bool:
    """ILSD changes training only with an exit below Lmax to distil: at Lmax = 1 on and off are one model."""
    return bool(ilsd) and int(Lmax) > 1


def study_columns(study: str, data: str, model: str, scale: str, N: int, Lmax: int, ilsd: bool, seed: int,
                  **extra) -> dict:
    """A run's W&B config columns (configs/logger/wandb.yaml): what runs of one study differ in, as values a
    workspace filters and groups by. ``params`` and ``gflops_per_sample`` (at L = Lmax) join once the model
    exists (``run_size``); an evaluation adds the whole training config under ``train``."""
    return {"study": study, "data": data, "model": model, "scale": scale, "N": int(N), "Lmax": int(Lmax),
            "NxLmax": f"{N}Nx{Lmax}L", "depth": int(N) * int(Lmax), "ilsd": "on" if ilsd_active(ilsd, Lmax) else "off",
            "seed": int(seed), **extra}


def run_tags(tags=(), N: int | None = None, Lmax: int | None = None, ilsd: bool | None = None,
             seed: int | None = None) -> list[str]:
    """The experiment's tags plus N×Lmax, ILSD on/off and the seed (configs/logger/wandb.yaml)."""
    extra = [f"{N}Nx{Lmax}L", f"ilsd_{'on' if ilsd_active(ilsd, Lmax) else 'off'}", f"seed{seed}"]
    return list(dict.fromkeys([str(t) for t in (tags or [])] + extra))


def run_size(loggers: list, params: int, gflops_per_sample: float) -> None:
    """The model's parameters and its GFLOPs per sample at Lmax, as hyperparameters (W&B: config columns)."""
    for lg in loggers:
        lg.log_hyperparams({"params": int(params), "gflops_per_sample": round(float(gflops_per_sample), 6)})


def eval_logger_config(cfg: DictConfig, train_cfg: DictConfig) -> DictConfig:
    """The eval config's logger group, resolved against the evaluated run's training config: the W&B run
    lands in the training run's study group (or eval's own ``study=``) with job_type eval, the training
    run's columns and seed tag, a name that says which run it evaluated, and the whole training config in
    its W&B config under ``train``."""
    train = OmegaConf.to_container(train_cfg, resolve=True)
    context = {k: train[k] for k in ("data", "model", "scale", "N", "Lmax", "ilsd", "seed") if k in train}
    study = cfg.get("study") or train.get("study") or default_study(train)
    context.update(tags=list(train.get("tags") or []) + ["eval"], run_name=f"{train_cfg.run_name}_{cfg.run_name}",
                   task_name="eval", study=study)
    base = cfg.copy()
    OmegaConf.set_struct(base, False)
    merged = OmegaConf.merge(base, context)
    if "wandb" in (merged.get("logger") or {}):
        wandb_cfg = merged.logger.wandb
        if OmegaConf.is_dict(wandb_cfg.get("config")):
            wandb_cfg.config.train = train
        else:
            wandb_cfg.config = {"train": train}
    return merged.logger


def default_study(train: dict) -> str:
    """The study of a checkpoint written before runs named one: its data, model and scale (train.yaml's default)."""
    return "_".join(str(train[k]["name"]) for k in ("data", "model", "scale") if isinstance(train.get(k), dict))
