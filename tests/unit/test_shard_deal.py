"""The reader's deal of an epoch's shards to R ranks x W workers: disjoint sample ranges that cover the
epoch, near-equal per slot, for any number and sizes of shards (the uneven case of issue 23)."""
from __future__ import annotations

import itertools

import pytest

from elt.data.shards.reader import deal, epoch_batches, slot_samples


@pytest.mark.parametrize("sizes,slots", [([4, 4, 4], 2), ([4, 4, 4], 4), ([1000] * 1281 + [167], 64),
                                         ([5, 5, 3, 5, 2], 3), ([7], 4), ([4] * 8, 2), ([3, 4, 4, 4, 1], 5)])
def test_every_sample_once_and_every_slot_at_least_the_bound(sizes, slots):
    shards = [{"name": f"s{i}", "samples": n} for i, n in enumerate(sizes)]
    owner = {}
    counts = []
    for slot in range(slots):
        n = 0
        for shard, first, stop in deal(shards, slot, slots):
            assert 0 <= first < stop <= shard["samples"]
            for j in range(first, stop):
                assert (shard["name"], j) not in owner  # disjoint
                owner[shard["name"], j] = slot
            n += stop - first
        counts.append(n)
    assert len(owner) == sum(sizes)  # covers the epoch
    assert min(counts) == slot_samples(shards, slots) and max(counts) - min(counts) <= 1  # near-equal
    whole_reads = sum(1 for slot in range(slots) for s, a, b in deal(shards, slot, slots) if a == 0 and b == s["samples"])
    assert whole_reads >= len(sizes) - 2 * slots  # only the remainder is split: shards are mostly read whole


def test_epoch_batches_are_equal_on_every_rank_and_need_no_shard_count():
    shards = [{"samples": n} for n in (4, 4, 4)]
    assert epoch_batches(shards, world=2, workers=1, batch_size=2) == 3
    assert epoch_batches(shards, world=2, workers=2, batch_size=2) == 2  # 3 samples per slot: 1 batch per worker
    assert epoch_batches(shards, world=8, workers=2, batch_size=2) == 0  # the datamodule refuses this in one line
    for order in itertools.permutations(range(3)):  # the bound does not depend on the epoch's permutation
        assert slot_samples([shards[i] for i in order], 2) == 6
