"""Train and cache a dataset's judge and its real reference statistics before the evaluations that
read them, so that evaluations started side by side (a sweep, the mini-paper's parallel jobs) read one
cache instead of each training the judge. Needs no checkpoint: the data come from the training config.

    python -m elt.evaluation.warm experiment=mini/fashion_maskgit data.raw_root=/usr/share/datasets/fashion-mnist

Overrides that start with ``eval.`` go to configs/eval.yaml (e.g. eval.reference_per_class=50, which
must match the evaluations'), ``paths.`` to both configs, the rest to configs/train.yaml.
"""
from __future__ import annotations

import logging
import sys

from hydra.errors import HydraException
from omegaconf import DictConfig

from elt.cli import one_line, run_cli
from elt.config import compose
from elt.evaluation.distributed import Ranks
from elt.evaluation.evaluate import judges_and_references, pick_device, read_settings
from elt.evaluation.scoring import load_reference_npz

log = logging.getLogger(__name__)


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """-> (train.yaml's, eval.yaml's)."""
    to_eval = [o for o in overrides if o.lstrip("+~").startswith(("eval.", "paths."))]
    to_train = [o for o in overrides if not o.lstrip("+~").startswith("eval.")]
    return to_train, to_eval


def warm(cfgs: tuple[DictConfig, DictConfig]) -> dict:
    """-> {extractor: its real statistics}; ``cfgs`` = (training config, evaluation config)."""
    train_cfg, cfg = cfgs
    s = read_settings(cfg, int(train_cfg.Lmax), int(train_cfg.data.num_classes))
    ranks = Ranks()  # one process: the caches are shared through files, not collectives
    device = pick_device(cfg.eval.get("device", "auto"), ranks)
    npz = load_reference_npz(s.reference_stats, s.pr_k) if s.reference_stats is not None else None
    _, extractors, refs = judges_and_references(cfg, train_cfg, s, device, int(train_cfg.data.num_classes), ranks, npz)
    for e in extractors:
        print(f"{e.name}: reference statistics of {int(refs[e.name]['n'])} {s.reference_split} items "
              f"cached under {cfg.paths.cache_dir}", flush=True)
    return refs


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] - %(message)s")
    to_train, to_eval = split_overrides(list(sys.argv[1:] if argv is None else argv))
    try:
        cfgs = compose("train", to_train), compose("eval", ["ckpt_path=null", *to_eval])
    except HydraException as e:  # an unknown config group or key, a malformed override
        print(f"error: {one_line(e).split(' Config search path:')[0]}", file=sys.stderr)
        sys.exit(2)
    run_cli(warm, cfgs)


if __name__ == "__main__":
    main()
