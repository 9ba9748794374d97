"""The mini-paper's arms and families (``arms.yaml``), read once."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from elt.evaluation.settings import loops_override

ARMS_FILE = Path(__file__).with_name("arms.yaml")


@dataclass(frozen=True)
class Arm:
    label: str
    N: int
    Lmax: int
    ilsd: str | None  # "on" / "off"; None: the experiment config's
    eval_loops: str  # eval.py's eval.loops: "all" or "[1,2,...]"
    extra_loops: int

    @property
    def overrides(self) -> list[str]:
        return [f"N={self.N}", f"Lmax={self.Lmax}", *([f"ilsd={self.ilsd}"] if self.ilsd else [])]


@dataclass(frozen=True)
class Family:
    name: str
    stage_one: str  # vq / kl
    weights: str  # the folder under data/weights stage one writes and the data config reads


_data = OmegaConf.to_container(OmegaConf.load(ARMS_FILE))
ARMS = {name: Arm(a["label"], int(a["N"]), int(a["Lmax"]), a.get("ilsd"), loops_override(a["eval_loops"]), int(a["extra_loops"]))
        for name, a in _data["arms"].items()}
FAMILIES = {name: Family(**f) for name, f in _data["families"].items()}
SEEDS_FULL, SEEDS_QUICK = tuple(_data["seeds"]["full"]), tuple(_data["seeds"]["quick"])
SAMPLES_PER_CLASS = int(_data["samples_per_class"])
ALPHA = float(_data["alpha"])
EQUIVALENCE_MARGIN = float(_data["equivalence_margin"])  # relative to the reference arm's mean
# the looped ELT arm the claims read: N unique layers looped up to LMAX
N, LMAX = ARMS["ilsd"].N, ARMS["ilsd"].Lmax


def mode_settings(quick: bool) -> tuple[list[str], tuple[int, ...]]:
    return (["maskgit"], SEEDS_QUICK) if quick else (list(FAMILIES), SEEDS_FULL)
