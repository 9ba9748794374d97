"""Sample a checkpoint under a compute budget. Example:
python sample.py ckpt_path=outputs/run/checkpoints/last.ckpt budget.gflops=2 labels=[3,7] n=8"""
import hydra
from omegaconf import DictConfig

from elt.runtime.cli import launch, run_cli


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
def main(cfg: DictConfig) -> None:
    from elt.jobs.sample import sample_entry  # after the command line is checked: a typo fails before heavy imports

    run_cli(sample_entry, cfg)


if __name__ == "__main__":
    launch(main)
