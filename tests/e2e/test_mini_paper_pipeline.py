"""The mini-paper's two-stage pipeline end to end on miniature Fashion-MNIST IDX files: stage one,
prepare.py's shards, train() and evaluate() at every loop count, for both families."""
from __future__ import annotations

import dataclasses

import pytest

from elt.evaluation import judges
from elt.experiments import stage_one
from elt.experiments.mini_paper import arms, stats
from elt.jobs.evaluate import evaluate
from elt.jobs.prepare import prepare
from elt.jobs.train import train
from support.config import compose_cfg
from support.miniature import make_fashion_mnist


@pytest.mark.parametrize("family", ["maskgit", "dit"])
def test_two_stage_pipeline_end_to_end_on_miniature_idx(family, tmp_path, train_cfg, monkeypatch):
    raw = make_fashion_mnist(tmp_path / "fm", train_per_class=6, test_per_class=1)
    kind = arms.FAMILIES[family].stage_one
    weights = tmp_path / kind
    stage_one.fit(kind, raw, weights, steps=2, val_per_class=2, val_items=8, batch_size=8,
                    **({"codes": 16} if kind == "vq" else {}))
    node = "tokenizer" if kind == "vq" else "autoencoder"
    data = [f"experiment=mini/fashion_{family}", f"data.raw_root={raw}", f"data.root={tmp_path / 'shards'}",
            "data.val_per_class=2", f"data.{node}.path={weights}", *(["data.tokenizer.vocab_size=16"] if kind == "vq" else [])]
    prepare(compose_cfg("prepare", [*data, "prepare.shard_size=8", "prepare.num_workers=0",
                                    f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path / "prepare"))
    out = train(train_cfg(*data, "data.batch_size=8", "N=1", "Lmax=2", "trainer.limit_val_batches=1"))
    monkeypatch.setitem(judges.JUDGES, "fashion_mnist", dataclasses.replace(
        judges.JUDGES["fashion_mnist"], epochs=1, batch_size=8, min_val_accuracy=0.0))
    cfg = compose_cfg("eval", [f"ckpt_path={out['ckpt_path']}", f"paths.cache_dir={tmp_path / 'cache'}",
                               "eval.samples_per_class=1", "eval.batch_size=16", "eval.grid_per_class=0",
                               "eval.progress=false", "eval.loops=all", "eval.extra_loops=1", "eval.sampler={steps:2}"],
                      tmp_path / "eval")
    rows = evaluate(cfg)["rows"]
    model_rows = [r for r in rows if r.get("loops") is not None]
    assert [r["loops"] for r in model_rows] == [1, 2, 3] and all(r[stats.METRIC] >= 0 for r in model_rows)
