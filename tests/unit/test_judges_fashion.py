"""The Fashion-MNIST judge: registered, shaped for 28×28, and trainable in the pinned process
(a recipe that cannot be pickled silently falls back to the caller's kernels)."""
from __future__ import annotations

import dataclasses
import pickle

import torch

from elt.data.fashion_mnist import FashionMNISTRaw
from elt.evaluation import judges
from support.miniature import make_fashion_mnist


def test_fashion_judge_recipe_is_registered_and_picklable():
    recipe = judges.JUDGES["fashion_mnist"]
    assert judges.judge_name("fashion_mnist") == "fashion_mnist_cnn" and recipe.min_val_accuracy == 0.85
    net = recipe.build(10)
    h, logits = net.features(torch.rand(3, 1, 28, 28))
    assert h.shape == (3, judges.ConvJudge.feature_dim) and logits.shape == (3, 10)
    pickle.dumps(recipe)  # else train_judge_pinned trains in the caller's process


def test_shard_location_is_not_part_of_the_judge_key():
    """MaskGIT-ELT's token shards and DiT-ELT's latent shards of one dataset share one judge."""
    module = {"_target_": "elt.data.ShardDataModule", "raw_root": "/d", "raw": {"train": {"split": "train"}}}
    recipe = judges.JUDGES["fashion_mnist"]
    a = judges.judge_key(recipe, {**module, "root": "/s/maskgit_elt", "batch_size": 64}, 10)
    assert a == judges.judge_key(recipe, {**module, "root": "/s/dit_elt", "shuffle_buffer": 9}, 10)
    assert a != judges.judge_key(recipe, {**module, "raw": {"train": {"split": "val"}}}, 10)


def test_fashion_judge_trains_pinned_on_the_reader(tmp_path):
    raw = make_fashion_mnist(tmp_path, train_per_class=4, test_per_class=1)
    train = FashionMNISTRaw(raw, "train", val_per_class=1)
    recipe = dataclasses.replace(judges.JUDGES["fashion_mnist"], epochs=1, batch_size=10)
    a = judges.train_judge_pinned(recipe, 10, train)
    b = judges.train_judge_pinned(recipe, 10, train)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
