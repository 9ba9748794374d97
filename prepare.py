"""Encode a raw dataset once into webdataset shards that train.py streams.

Example: python prepare.py data=imagenet model=maskgit_elt data.raw_root=<ILSVRC dir> data.root=<shard dir>
On several GPUs: add trainer=ddp trainer.devices=8 (shard n is written by rank n % R; rerun the same command, on any number of ranks, to resume)."""
import hydra
from omegaconf import DictConfig

from elt.jobs.prepare_checks import check_config
from elt.runtime.cli import launch, run_cli


@hydra.main(version_base="1.3", config_path="configs", config_name="prepare")
def main(cfg: DictConfig) -> None:
    def checked_prepare(cfg: DictConfig) -> dict:
        check_config(cfg)  # before the encoding job's imports (torch, Lightning, diffusers): one line in a second
        from elt.jobs.prepare import prepare

        return prepare(cfg)

    run_cli(checked_prepare, cfg)


if __name__ == "__main__":
    launch(main)
