"""The paper's rows (``rows.yaml``, the only copy of its numbers) and the experiment config each row names."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from elt.runtime.config import ConfigError, compose

ROWS_FILE = Path(__file__).with_name("rows.yaml")
RECIPES_FILE = Path(__file__).with_name("recipes.yaml")
PROTOCOLS_FILE = Path(__file__).with_name("protocols.yaml")
PROTOCOLS = OmegaConf.to_container(OmegaConf.load(PROTOCOLS_FILE))


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
    """The row's evaluation: loop counts, sampler steps, guidance scales, and its published protocol
    (``protocols.yaml``: the header's text and the eval.py settings, ``reference_stats`` included)."""
    e = OmegaConf.to_container(cfg.get("paper", {}).get("eval", {}) or {}, resolve=True)
    steps = int(e.get("steps") or cfg.model.sampler.steps)
    scales = [float(s) for s in e.get("cfg_scales") or [cfg.model.sampler.cfg_scale]]
    name = e.get("protocol")
    if name is not None and name not in PROTOCOLS:
        raise ConfigError(f"paper.eval.protocol={name!r} is not a protocol; choose from {', '.join(PROTOCOLS)}")
    protocol = PROTOCOLS.get(name, {})
    settings = dict(protocol.get("eval", {}))
    if protocol.get("reference_stats"):
        if not e.get("reference_stats"):
            raise ConfigError(f"paper.eval.protocol={name} reads precomputed statistics: set paper.eval.reference_stats")
        settings["reference_stats"] = e["reference_stats"]
    return {"loops": e.get("loops", "all"), "steps": steps, "cfg_scales": scales, "protocol": name,
            "protocol_text": " ".join(str(protocol.get("text", "")).split()), "eval": settings}


@dataclass(frozen=True)
class RecipeValue:
    """One training setting of a recipe: the config key, its value, where the value comes from
    (``paper``, a reference named in ``recipes.yaml``'s sources, or ``ours``), why, and for ours what
    the reference does instead."""

    key: str
    value: object
    source: str
    why: str = ""
    reference: str = ""

    @property
    def deviation(self) -> bool:
        return self.source == "ours" or bool(self.reference)


@dataclass(frozen=True)
class Recipe:
    name: str
    tables: tuple[str, ...]
    values: tuple[RecipeValue, ...]


def load_recipes(path: Path = RECIPES_FILE) -> tuple[dict[str, str], list[Recipe]]:
    """({source name: what it refers to}, the recipes), checked: known sources, a reason for each of ours."""
    data = OmegaConf.to_container(OmegaConf.load(path))
    sources = {k: str(v) for k, v in data["sources"].items()}
    recipes = []
    for name, r in data["recipes"].items():
        values = []
        for key, v in r["values"].items():
            rv = RecipeValue(key, v["value"], str(v["source"]), " ".join(str(v.get("why", "")).split()),
                             " ".join(str(v.get("reference", "")).split()))
            if rv.source not in sources:
                raise ConfigError(f"{path.name}: {name}.{key}: unknown source {rv.source!r}; sources: {', '.join(sources)}")
            if rv.deviation and not rv.why:
                raise ConfigError(f"{path.name}: {name}.{key}: a deviation (source ours, or a reference) needs a why")
            values.append(rv)
        recipes.append(Recipe(name, tuple(r["tables"]), tuple(values)))
    return sources, recipes


SOURCES, RECIPES = load_recipes()


def recipe_of(table: str) -> Recipe:
    """The recipe the rows of ``table`` follow."""
    found = [r for r in RECIPES if table in r.tables]
    if len(found) != 1:
        raise ConfigError(f"{RECIPES_FILE.name}: table {table!r} is in {len(found)} recipes, expected exactly one")
    return found[0]
