"""Evaluate a checkpoint at every loop count. Example: python eval.py ckpt_path=outputs/run/checkpoints/last.ckpt eval.extra_loops=2"""
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("ELT_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT / "src"))  # runs from a plain checkout too

from elt.cli import run_cli  # noqa: E402
from elt.evaluation import evaluate  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_cli(evaluate, cfg)


if __name__ == "__main__":
    main()
