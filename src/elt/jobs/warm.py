"""Train and cache a dataset's judge and its real reference statistics before the evaluations that
read them, so that evaluations started side by side (a sweep, the mini-paper's parallel jobs) read one
cache instead of each training the judge.

    python -m elt.jobs.warm ckpt_path=<run>/checkpoints/last.ckpt [data.raw_root=...] [eval.* ...]
    python -m elt.jobs.warm experiment=mini/fashion_maskgit [data.raw_root=...] [eval.* ...]

With ``ckpt_path`` the overrides are eval.py's (the run's data come from its checkpoint, moved by
``data.raw_root`` / ``data.root``): pass the evaluations' own command line. Without one (before
training has finished), overrides that start with ``eval.`` go to configs/eval.yaml, ``paths`` ones
to both configs, and the rest to configs/train.yaml: the training run's own data overrides. Either
way the ``eval.*`` settings that name the statistics (extractors, reference split and subset) must
be the evaluations'.
"""
from __future__ import annotations

import logging
import sys

from hydra.errors import HydraException
from omegaconf import DictConfig

from elt.evaluation.references import judges_and_references
from elt.evaluation.scoring import load_reference_npz
from elt.evaluation.settings import read_settings
from elt.jobs.evaluate import stored_run
from elt.runtime.cli import one_line, renamed_group, run_cli
from elt.runtime.config import compose
from elt.runtime.distributed import Ranks
from elt.runtime.devices import pick_device

log = logging.getLogger(__name__)


def split_overrides(overrides: list[str]) -> tuple[list[str] | None, list[str]]:
    """-> (train.yaml's, eval.yaml's); (None, all) when a checkpoint gives the training config."""
    key = [o.lstrip("+~").split("=")[0] for o in overrides]
    if "ckpt_path" in key:
        return None, overrides
    to_eval = [o for o, k in zip(overrides, key) if k.startswith("eval.") or k.split(".")[0] == "paths"]
    to_train = [o for o, k in zip(overrides, key) if not k.startswith("eval.")]
    return to_train, to_eval


def warm(cfgs: tuple[DictConfig | None, DictConfig]) -> dict:
    """-> {extractor: its real statistics}; ``cfgs`` = (training config or None: the checkpoint's, evaluation config)."""
    train_cfg, cfg = cfgs
    if train_cfg is None:
        _, train_cfg = stored_run(cfg)
    num_classes = int(train_cfg.data.num_classes)
    s = read_settings(cfg, int(train_cfg.Lmax), num_classes)
    ranks = Ranks()  # one process: the caches are shared through files, not collectives
    device = pick_device(cfg.eval.get("device", "auto"), ranks)
    npz = load_reference_npz(s.reference_stats, s.pr_k) if s.reference_stats is not None else None
    _, extractors, refs = judges_and_references(cfg, train_cfg, s, device, num_classes, ranks, npz)
    for e in extractors:
        if refs[e.name] is npz:
            print(f"{e.name}: reference statistics from {s.reference_stats} (eval.reference_stats)", flush=True)
        else:
            print(f"{e.name}: reference statistics of {int(refs[e.name]['n'])} {s.reference_split} items "
                  f"cached under {cfg.paths.cache_dir}", flush=True)
    return refs


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return
    logging.basicConfig(level=logging.INFO, format="[%(name)s][%(levelname)s] - %(message)s")
    renamed = renamed_group(argv)
    if renamed:
        print(renamed, file=sys.stderr)
        sys.exit(2)
    to_train, to_eval = split_overrides(argv)
    try:
        cfgs = (None if to_train is None else compose("train", to_train),
                compose("eval", [*([] if to_train is None else ["ckpt_path=null"]), *to_eval]))
    except HydraException as e:  # an unknown config group or key, a malformed override
        print(f"error: {one_line(e).split(' Config search path:')[0]}", file=sys.stderr)
        sys.exit(2)
    run_cli(warm, cfgs)


if __name__ == "__main__":
    main()
