"""prepare.py and train.py on two gloo ranks: each rank writes its own shards, and in training the
ranks read disjoint samples that together cover every epoch."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from elt.data.raw.images import ImageNetRaw
from elt.data.shards.format import read_index
from elt.data.shards.reader import read_shard
from support.config import ROOT, child_env
from support.miniature import make_imagenet

PIXEL_TOKENS = ["data.tokenizer._target_=elt.encoders.tokenizers.PixelTokenizer", "~data.tokenizer.path",
                "~data.tokenizer.vocab_size", "~data.tokenizer.grid_shape", "+data.tokenizer.levels=17"]


def run(tmp_path, script: str, *args: str):
    env = child_env()
    cmd = [sys.executable, script, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.precision=32-true", "trainer.enable_progress_bar=false", *args]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.slow  # prepare.py and train.py on two ranks, as processes
def test_two_ranks_prepare_their_own_shards_and_train_on_disjoint_samples(tmp_path):
    raw = make_imagenet(tmp_path / "raw", wnids=4, per_class=4, val_per_class=1)  # 16 train images
    shards = tmp_path / "shards"
    data = ["data=imagenet", f"data.raw_root={raw}", f"data.root={shards}", "data.resolution=8", "data.num_classes=4",
            "data.num_workers=0", *PIXEL_TOKENS]
    run(tmp_path, "prepare.py", *data, "prepare.shard_size=2", "prepare.num_workers=0", "prepare.batch_size=3",
        f"hydra.run.dir={tmp_path / 'prep'}")
    index = read_index(shards / "train")
    assert index["complete"] and index["num_samples"] == 16  # the plan, hence the index, does not depend on ranks
    names = [s["name"] for s in index["shards"]]
    assert names == [f"shard-{n:05d}.tar" for n in range(8)]  # shard n: items 2n, 2n+1, written by rank n % 2
    keys = ImageNetRaw(raw).keys
    written = [s["__key__"] for n in range(8) for s in read_shard(str(shards / "train" / f"shard-{n:05d}.tar"))]
    assert written == keys

    out = tmp_path / "run"
    run(tmp_path, "train.py", *data, "scale.width=32", "scale.heads=2", "scale.mlp_dim=64", "N=1", "Lmax=2",
        "data.batch_size=2", "trainer.max_steps=8", "trainer.val_check_interval=4", "trainer.limit_val_batches=1",
        "logger=none", "+callbacks.probe._target_=support.callbacks.KeyProbe", f"+callbacks.probe.output_dir={out}",
        f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}")
    r0, r1 = (json.loads((out / f"keys_rank{r}.json").read_text()) for r in (0, 1))
    assert len(r0) == len(r1) == 8  # 16 samples / 2 ranks / batch 2 = 4 steps per epoch, 2 epochs
    for epoch in (0, 1):
        seen = [[k for s in rank if s["epoch"] == epoch for k in s["keys"]] for rank in (r0, r1)]
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == sorted(keys)  # together: every sample once
    assert [k for s in r0 if s["epoch"] == 0 for k in s["keys"]] != [k for s in r0 if s["epoch"] == 1 for k in s["keys"]]
    assert (out / "checkpoints" / "last.ckpt").is_file()
