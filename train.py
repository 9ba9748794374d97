"""Train an ELT model. Example: python train.py model=maskgit_elt data=digits N=2 Lmax=4 ilsd=off"""
import hydra
from omegaconf import DictConfig

from elt.runtime.cli import launch, run_cli


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from elt.jobs.train import train  # after the command line is checked: a typo fails before heavy imports

    run_cli(train, cfg)


if __name__ == "__main__":
    launch(main)
