"""Train an ELT model. Example: python train.py model=maskgit_elt data=digits N=2 Lmax=4 ilsd=off"""
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("ELT_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT / "src"))  # runs from a plain checkout too

from elt.cli import run_cli  # noqa: E402
from elt.train import train  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    run_cli(train, cfg)


if __name__ == "__main__":
    main()
