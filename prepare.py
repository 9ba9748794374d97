"""Encode a raw dataset once into webdataset shards that train.py streams.

Example: python prepare.py data=imagenet model=maskgit_elt data.raw_root=<ILSVRC dir> data.root=<shard dir>
On several GPUs: add trainer=ddp trainer.devices=8 (shard n is written by rank n % R; rerun the same command, on any number of ranks, to resume)."""
import hydra
from omegaconf import DictConfig

from elt.runtime.cli import launch, run_cli


@hydra.main(version_base="1.3", config_path="configs", config_name="prepare")
def main(cfg: DictConfig) -> None:
    from elt.jobs.prepare import prepare  # after the command line is checked: a typo fails before heavy imports

    run_cli(prepare, cfg)


if __name__ == "__main__":
    launch(main)
