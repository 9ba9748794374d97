"""Evaluate a checkpoint at every loop count. Example: python eval.py ckpt_path=outputs/run/checkpoints/last.ckpt eval.extra_loops=2

On several GPUs: torchrun --nproc_per_node=K eval.py ckpt_path=... (the same table as one process)."""
import hydra
from omegaconf import DictConfig

from elt.runtime.cli import launch, run_cli


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from elt.jobs.evaluate import evaluate  # after the command line is checked: a typo fails before heavy imports

    run_cli(evaluate, cfg)


if __name__ == "__main__":
    launch(main)
