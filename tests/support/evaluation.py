"""eval.py's config on a tiny checkpoint, and a guard that no evaluation work starts."""
from __future__ import annotations

from pathlib import Path

from elt.evaluation.scoring import Scorer
from elt.models.maskgit import MaskGITELT
from support.config import compose_cfg


def eval_cfg(ckpt, out: Path, cache: Path, *overrides: str):
    base = [f"ckpt_path={ckpt}", f"paths.cache_dir={cache}", "eval.samples_per_class=3", "eval.batch_size=16",
            "eval.grid_per_class=2", "eval.is_splits=3", "eval.progress=false"]
    if not any(o.startswith("eval.sampler=") for o in overrides):
        base.append("eval.sampler={steps:2}")
    return compose_cfg("eval", base + list(overrides), out)


def forbid_work(monkeypatch):
    """Any sampling or scoring (reference statistics included) fails the test: bad input must stop first."""
    def work(*a, **k):
        raise AssertionError("sampling/scoring started before the bad input was reported")

    monkeypatch.setattr(MaskGITELT, "sample", work)
    monkeypatch.setattr(Scorer, "extract", work)
