"""Training-input throughput: prepare.py's token shards vs decoding JPEGs and encoding them on the fly.

Both paths feed MaskGIT-ELT the same thing (VQ tokens of ADM-cropped 256x256 images) from the same
miniature ILSVRC folder, with the same DataLoader workers and batch size on the same machine. The
on-the-fly path is what training without shards would do every epoch: PIL decode + ADM crop in the
workers (elt.data.raw.images.ImageNetRaw), then the VQ encoder in the main process. The shard path is
elt.data.ShardDataModule's stream (tar read, shuffle buffer, npy decode). Written images are solid
colours and the VQ model is a small random one (5 down blocks: 16x16 tokens from 1024 codes), both
much cheaper than real photos and a real VQGAN: the ratio is a lower bound.

The epoch boundary: short epochs of the same shards through ``EpochLoader`` with fresh workers (started
at every epoch) and kept ones (``data.persistent_workers``), interleaved; the time from asking for an
epoch to its first batch, and a whole epoch. Results go to benchmarks/results/data_loader.{json,md}.

    python benchmarks/data_loader.py [--images 96] [--workers 2] [--batch 16] [--boundary-epochs 20]
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ilsd_overhead import table_lines, write_results  # noqa: E402
from support.miniature import make_imagenet  # noqa: E402

from elt.data.raw.images import ImageNetRaw  # noqa: E402
from elt.data.shards.format import FORMAT, encoder_fingerprint, plan_shards, stored_format  # noqa: E402
from elt.data.shards.reader import EpochLoader, ShardStream  # noqa: E402
from elt.data.shards.writer import ShardWriter, merge_index  # noqa: E402
from elt.encoders.pretrained import DiffusersVQTokenizer  # noqa: E402


def tiny_vq(path: Path) -> DiffusersVQTokenizer:
    from diffusers import VQModel

    torch.manual_seed(0)
    blocks = 5  # stride 16: 256x256 -> 16x16, MaskGIT's grid
    VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=(8,) * blocks, layers_per_block=1,
            latent_channels=4, norm_num_groups=4, num_vq_embeddings=1024).save_pretrained(str(path))
    return DiffusersVQTokenizer(path, (3, 256, 256), vocab_size=1024, grid_shape=(16, 16))


def write_shards(raw: ImageNetRaw, tok, split_dir: Path, shard_size: int) -> dict:
    """What prepare.py writes (one rank), built from the same parts."""
    split_dir.mkdir(parents=True)
    fmt = stored_format(tok)
    settings = {"format": FORMAT, **fmt, "fingerprint": encoder_fingerprint(tok), "num_items": len(raw),
                "shard_size": shard_size}
    writer = ShardWriter(split_dir, 0, 1, plan_shards(len(raw), shard_size), fmt, settings)
    for i in range(len(raw)):
        item = raw[i]
        writer.add(i, item["key"], {"": tok.encode(item["image"][None])[0].numpy()}, item["label"])
        writer.seen(i)
    return merge_index(split_dir, settings)


def on_the_fly(raw: ImageNetRaw, tok, batch: int, workers: int, epochs: int) -> tuple[int, float]:
    loader = torch.utils.data.DataLoader(raw, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        for b in loader:
            tokens = tok.encode(b["image"])
            n += len(tokens)
    return n, time.perf_counter() - start


def from_shards(index: dict, split_dir: Path, batch: int, workers: int, passes: int) -> tuple[int, float]:
    """One long epoch of ``passes`` x the split (the stream continues into the next permutations), so
    worker start-up is amortised as over an ImageNet epoch of 1.28M samples."""
    per_pass = index["num_samples"] // batch // max(1, workers) * max(1, workers)
    stream = ShardStream(split_dir, index, batch, 0, 1, train=True, batches=per_pass * passes, shuffle_buffer=1000)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    n, start = 0, time.perf_counter()
    for b in loader:
        n += len(b["tokens"])
    return n, time.perf_counter() - start


def epoch_boundary(index: dict, split_dir: Path, batch: int, workers: int, epochs: int) -> dict:
    """Median seconds to an epoch's first batch and for a whole epoch, fresh against kept workers,
    over ``epochs`` interleaved epochs of each (the kept loader's first epoch, which starts them, not
    counted)."""
    loaders = {}
    for keep in (False, True):
        stream = ShardStream(split_dir, index, batch, 0, 1, train=True, shuffle_buffer=1000,
                             batches=index["num_samples"] // batch // workers * workers)
        loaders[keep] = EpochLoader(stream, itertools.count().__next__, {"epoch": -1, "batches": 0},
                                    num_workers=workers, persistent_workers=keep)
    for b in loaders[True]:  # start the kept workers
        pass
    first, whole = {False: [], True: []}, {False: [], True: []}
    for e in range(epochs):
        for keep in ((False, True) if e % 2 == 0 else (True, False)):
            start = time.perf_counter()
            it = iter(loaders[keep])
            next(it)
            first[keep].append(time.perf_counter() - start)
            for b in it:
                pass
            whole[keep].append(time.perf_counter() - start)
    med = {f"{k}_{'kept' if keep else 'fresh'}_s": statistics.median(v[keep]) for k, v in
           (("first_batch", first), ("epoch", whole)) for keep in (False, True)}
    return {**med, "epochs": epochs, "batches_per_epoch": len(loaders[True].dataset),
            "epoch_ratio": med["epoch_fresh_s"] / med["epoch_kept_s"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--size", type=int, nargs=2, default=[500, 375], help="JPEG width height (ImageNet's typical)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--shard-passes", type=int, default=200)
    ap.add_argument("--boundary-epochs", type=int, default=20, help="interleaved short epochs per worker setting")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_loader.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        classes = 8
        make_imagenet(tmp / "raw", wnids=classes, per_class=args.images // classes, val_per_class=0, size=tuple(args.size))
        raw = ImageNetRaw(tmp / "raw", "train", resolution=256)
        tok = tiny_vq(tmp / "vq")
        t0 = time.perf_counter()
        index = write_shards(raw, tok, tmp / "shards" / "train", shard_size=max(1, len(raw) // (4 * args.workers)))
        prepare_s = time.perf_counter() - t0
        on_the_fly(raw, tok, args.batch, args.workers, 1)  # warm-up (file cache, worker start)
        n_raw, s_raw = on_the_fly(raw, tok, args.batch, args.workers, 1)
        from_shards(index, tmp / "shards" / "train", args.batch, args.workers, 5)
        n_sh, s_sh = from_shards(index, tmp / "shards" / "train", args.batch, args.workers, args.shard_passes)
        boundary = epoch_boundary(index, tmp / "shards" / "train", args.batch, args.workers, args.boundary_epochs)
    rows = [
        {"path": "JPEG decode + ADM crop (workers) + VQ encode", "samples": n_raw, "seconds": s_raw, "samples_per_s": n_raw / s_raw},
        {"path": "token shards (ShardDataModule stream)", "samples": n_sh, "seconds": s_sh, "samples_per_s": n_sh / s_sh},
    ]
    speedup = rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
    meta = {"images": len(raw), "jpeg_size": args.size, "resolution": 256, "tokens": "16x16 from 1024 codes",
            "workers": args.workers, "batch": args.batch, "torch_threads": 1, "speedup": speedup,
            "prepare_seconds_one_process": prepare_s,
            "cpus": os.cpu_count(), "torch": torch.__version__, "epoch_boundary": boundary}
    table = [f"Training-input throughput, {len(raw)} miniature ILSVRC JPEGs ({args.size[0]}x{args.size[1]}) -> 256x256 "
             f"-> 16x16 VQ tokens; {args.workers} DataLoader workers, batch {args.batch}, 1 torch thread, "
             f"{meta['cpus']} CPUs (`python benchmarks/data_loader.py`).", ""]
    table += table_lines(["path", "samples", "seconds", "samples/s"],
                            [[r["path"], str(r["samples"]), f"{r['seconds']:.2f}", f"{r['samples_per_s']:.0f}"] for r in rows])
    table += ["", f"Shards are {speedup:.0f}x faster (encoding and writing them, once, took {prepare_s:.1f} s in one process). "
                  "Solid-colour JPEGs and a tiny random VQ model make the on-the-fly path cheaper than real "
                  "photos through a real VQGAN: the ratio is a lower bound.", "",
              f"Epoch boundary ({args.boundary_epochs} interleaved epochs of {boundary['batches_per_epoch']} batches "
              f"each): the first batch of an epoch after {1e3 * boundary['first_batch_fresh_s']:.0f} ms with fresh "
              f"workers, {1e3 * boundary['first_batch_kept_s']:.0f} ms with kept ones (`data.persistent_workers`); "
              f"a whole epoch {1e3 * boundary['epoch_fresh_s']:.0f} ms against {1e3 * boundary['epoch_kept_s']:.0f} ms "
              f"({boundary['epoch_ratio']:.2f}x; medians)."]
    write_results(args.out, meta, rows, table)
    if speedup < 10:
        raise SystemExit(f"shard path only {speedup:.1f}x faster than on-the-fly decoding (expected >= 10x)")


if __name__ == "__main__":
    main()
