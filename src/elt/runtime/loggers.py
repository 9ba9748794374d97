"""A CSV logger that appends: resuming or rerunning in a run directory keeps the rows already
there (Lightning's deletes ``metrics.csv`` when its directory is not empty, even if the new run
then fails at step 2)."""
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


# ---- W&B: one group per configuration, evaluations beside their training runs -----------------------
def run_tags(tags=(), N: int | None = None, Lmax: int | None = None, ilsd: bool | None = None,
             seed: int | None = None) -> list[str]:
    """The experiment's tags plus N×Lmax, ILSD on/off and the seed (configs/logger/wandb.yaml), so a
    dashboard filters budgets, ablations and seeds without parsing run names."""
    extra = [f"{N}Nx{Lmax}L", f"ilsd_{'on' if ilsd else 'off'}", f"seed{seed}"]
    return list(dict.fromkeys([str(t) for t in (tags or [])] + extra))


def eval_logger_config(cfg: DictConfig, train_cfg: DictConfig) -> DictConfig:
    """The eval config's logger group, resolved against the evaluated run's training config: the W&B run
    lands in the training run's group (same data, model, scale, N×Lmax, ILSD) with job_type eval, the
    training run's seed tag, and the whole training config in its W&B config under ``train``."""
    train = OmegaConf.to_container(train_cfg, resolve=True)
    context = {k: train[k] for k in ("data", "model", "scale", "N", "Lmax", "ilsd", "seed") if k in train}
    context.update(tags=list(train.get("tags") or []) + ["eval"], run_name=f"{train_cfg.run_name}_{cfg.run_name}",
                   task_name="eval")
    base = cfg.copy()
    OmegaConf.set_struct(base, False)
    merged = OmegaConf.merge(base, context)
    if "wandb" in (merged.get("logger") or {}):
        merged.logger.wandb.config = {"train": train}
    return merged.logger
