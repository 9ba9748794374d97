"""The paper's rows (``rows.yaml``, the only copy of its numbers) and the experiment config each row names."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from elt.runtime.config import ConfigError, compose

ROWS_FILE = Path(__file__).with_name("rows.yaml")


@dataclass(frozen=True)
class PaperRow:
    """One published row (the fields: ``rows.yaml``'s header)."""

    table: str
    label: str
    config: str | None
    params: float | None = None
    gflops: float | None = None
    metrics: dict = field(default_factory=dict)
    steps: int | None = None
    loops: int | None = None
    note: str = ""


def load(path: Path = ROWS_FILE) -> tuple[list[PaperRow], dict[str, tuple[str, str, float]]]:
    """(every row in table order, {scale: (ELT row, baseline row, paper's throughput ratio)})."""
    data = OmegaConf.to_container(OmegaConf.load(path))
    rows = [PaperRow(table, **r) for table, rows in data["tables"].items() for r in rows]
    throughput = {s: (t["elt"], t["baseline"], float(t["ratio"])) for s, t in data["throughput"].items()}
    return rows, throughput


ROWS, THROUGHPUT = load()
TABLES = tuple(dict.fromkeys(r.table for r in ROWS))


def rows_of(table: str) -> list[PaperRow]:
    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}; choose from {', '.join(TABLES)}")
    return [r for r in ROWS if r.table == table]


def row_named(config: str) -> PaperRow:
    for r in ROWS:
        if r.config == config:
            return r
    raise ConfigError(f"unknown paper row {config!r}; rows: {', '.join(r.config for r in ROWS if r.config)}")


def compose_row(config: str, overrides=()) -> DictConfig:
    """The training config of ``experiment=paper/<config>`` as train.py would see it (no Hydra run)."""
    return compose("train", [f"experiment=paper/{config}", *overrides])


def eval_spec(cfg: DictConfig) -> dict:
    """The row's evaluation: loop counts, sampler steps, guidance scales, sample count."""
    e = OmegaConf.to_container(cfg.get("paper", {}).get("eval", {}) or {}, resolve=True)
    steps = int(e.get("steps") or cfg.model.sampler.steps)
    scales = [float(s) for s in e.get("cfg_scales") or [cfg.model.sampler.cfg_scale]]
    return {"loops": e.get("loops", "all"), "steps": steps, "cfg_scales": scales, "num_samples": e.get("num_samples")}
