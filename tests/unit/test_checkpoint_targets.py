"""Classes moved to other modules: checkpoints naming the old paths load, and cache keys do not change."""
from __future__ import annotations

import torch
from hydra.utils import instantiate

from elt.jobs.train import resolved_config
from elt.evaluation.judges import data_key
from elt.runtime.checkpoint import MOVED_TARGETS, load_run
from support.config import compose_cfg


def with_old_targets(node):
    old = {new: old for old, new in MOVED_TARGETS.items()}
    if isinstance(node, dict):
        return {k: old.get(v, v) if k == "_target_" else with_old_targets(v) for k, v in node.items()}
    if isinstance(node, list):
        return [with_old_targets(v) for v in node]
    return node


def test_old_module_paths_in_a_stored_config_load_under_the_new_ones(tmp_path):
    cfg = compose_cfg("train", ["experiment=digits_maskgit", "scale=tiny", "scale.width=32", "scale.heads=2",
                                "scale.mlp_dim=64", f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path / "run")
    stored = with_old_targets(resolved_config(cfg))
    assert stored["model"]["tokenizer"]["_target_"] == "elt.tokenizers.PixelTokenizer"  # the old path is stored
    model = instantiate(cfg.model)
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict(), "elt_config": stored}, path)
    loaded, run_cfg = load_run(path)
    assert run_cfg.model.tokenizer._target_ == "elt.encoders.tokenizers.PixelTokenizer"
    assert run_cfg.callbacks.ilsd._target_ == "elt.core.ilsd.ILSDCallback"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_cache_keys_name_a_moved_reader_by_its_first_path(tmp_path):
    cfg = compose_cfg("train", ["data=imagenet", "model=dit_elt", "data.raw_root=/raw", "data.root=/shards"], tmp_path)
    key = data_key(cfg.data.module)
    assert "elt.data.raw.ImageNetRaw" in str(key) and "elt.data.raw.images" not in str(key)
