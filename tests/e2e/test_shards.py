"""Raw data -> prepare.py's shards -> train.py -> eval.py, on miniature datasets in the real layouts:
what the shards and their index hold, resume and refusal of prepare, and damaged shards."""
from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from elt.runtime.cli import run_cli
from elt.runtime.config import ConfigError
from elt.data.raw.images import ImageNetRaw
from elt.data.shards.format import encoder_fingerprint, read_index
from elt.data.shards.reader import ShardStream, read_shard
from elt.data.shards.writer import ShardWriter
from elt.evaluation.extractors import STANDARD_EXTRACTORS
from elt.jobs.evaluate import evaluate
from elt.jobs.prepare import prepare
from elt.jobs.train import train
from support.checkpoints import assert_same_weights, weights
from support.config import ROOT, compose_cfg, in_dir
from support.evaluation import eval_cfg
from support.miniature import make_image_folder, make_imagenet, make_ucf101
from support.stand_ins import StandInInception, TinyI3D, save_tiny_kl, save_tiny_vq

PIXEL_TOKENS = ["data.tokenizer._target_=elt.encoders.tokenizers.PixelTokenizer", "~data.tokenizer.path",
                "~data.tokenizer.vocab_size", "~data.tokenizer.grid_shape", "+data.tokenizer.levels=17"]
SMALL = ["prepare.batch_size=5", "prepare.num_workers=0", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """ILSVRC layout: 3 classes x 4 train images, 2 val images per class (flat val + csv)."""
    return make_imagenet(tmp_path_factory.mktemp("ilsvrc"), wnids=3, per_class=4, val_per_class=2, val_layout="flat")


def image_data(raw: Path | None, root: Path, *more: str) -> list[str]:
    return ["data=imagenet", *([f"data.raw_root={raw}"] if raw else []), f"data.root={root}", "data.resolution=8", "data.num_classes=3",
            "data.num_workers=0", *more]


def prepare_cfg(tmp_path: Path, data: list[str], *more: str):
    return compose_cfg("prepare", [*data, "prepare.shard_size=4", *SMALL, f"paths.cache_dir={tmp_path / 'cache'}",
                                   *more], tmp_path / "prepare")


def samples_of(split_dir: Path) -> dict[str, tuple[np.ndarray, int]]:
    """key -> (stored array, label), over every shard of a split."""
    out = {}
    for shard in sorted(split_dir.glob("shard-*.tar")):
        for s in read_shard(str(shard)):
            field = next(k for k in s if k.endswith(".npy"))
            out[s["__key__"]] = (np.load(io.BytesIO(s[field])), int(s["cls"]))
    return out


def video_rows(ckpt_path, tmp_path: Path, *more: str) -> list[dict]:
    """eval.py's rows of a video checkpoint at L=1, FVD in a tiny I3D's features."""
    weights = tmp_path / "i3d.pt"
    torch.jit.script(TinyI3D()).save(str(weights))
    return evaluate(eval_cfg(ckpt_path, tmp_path / "eval", tmp_path / "cache", "eval.extractors=[i3d]",
                             f"eval.weights.i3d={weights}", "eval.loops=[1]", "eval.samples_per_class=1",
                             "eval.is_splits=1", *more))["rows"]


def test_images_to_vq_tokens_to_maskgit_to_eval(imagenet, tmp_path, train_cfg, monkeypatch):
    """MaskGIT-ELT with a diffusers VQModel: the shards hold its tokens of the ADM-cropped images,
    training reads them (never the JPEGs), evaluation reads the real images through the raw reader."""
    vq = save_tiny_vq(tmp_path / "vq")  # stride 2: 16x16 images -> 8x8 tokens from 32 codes
    data = image_data(imagenet, tmp_path / "shards", "data.resolution=16", f"data.tokenizer.path={vq}",
                      "data.tokenizer.vocab_size=32", "data.tokenizer.grid_shape=[8,8]")
    result = prepare(prepare_cfg(tmp_path, data))
    train_index, val_index = result["train"], result["val"]
    tok = instantiate(compose_cfg("prepare", data).data.tokenizer)
    s = train_index["settings"]
    assert (s["kind"], s["field"], s["dtype"], s["shape"]) == ("tokens", "tokens.npy", "int16", [64])
    assert s["fingerprint"] == tok.fingerprint and s["encoder"] == "DiffusersVQTokenizer"
    assert s["preprocessing"] == {"reader": "ImageNetRaw", "crop": "adm_center_crop", "split": "train", "resolution": 16,
                                  "flip": "none"}
    assert [(x["name"], x["samples"]) for x in train_index["shards"]] == [
        ("shard-00000.tar", 4), ("shard-00001.tar", 4), ("shard-00002.tar", 4)]
    assert train_index["complete"] and train_index["num_samples"] == 12 and val_index["num_samples"] == 6
    assert json.loads((tmp_path / "shards" / "train" / "index.json").read_text()) == train_index
    raw = ImageNetRaw(imagenet, "train", resolution=16)
    stored = samples_of(tmp_path / "shards" / "train")
    assert sorted(stored) == sorted(raw.keys)
    for i in (0, 5, 11):
        tokens, label = stored[raw.keys[i]]
        assert label == raw.labels[i] and tokens.dtype == np.int16
        assert np.array_equal(tokens, tok.encode(raw[i]["image"][None])[0].numpy())

    def no_jpeg(*a, **k):
        raise AssertionError("training decoded a JPEG")

    monkeypatch.setattr(ImageNetRaw, "load", no_jpeg)
    cfg = train_cfg(*data, "data.batch_size=4", "N=1", "Lmax=2")
    out = train(cfg)
    assert out["ckpt_path"] and np.isfinite(out["metrics"]["train/loss"]) and "val/loss_L2" in out["metrics"]
    monkeypatch.undo()
    monkeypatch.setitem(STANDARD_EXTRACTORS, "inception", lambda w: StandInInception(w, pixels=3 * 16 * 16))
    rows = evaluate(eval_cfg(out["ckpt_path"], tmp_path / "eval", tmp_path / "cache", "eval.extractors=[inception]",
                             "eval.loops=[1]", "eval.samples_per_class=2", "eval.is_splits=1"))["rows"]
    assert [r["row"] for r in rows] == ["real", "trivial", "model"] and all(r["fid"] >= 0 for r in rows)


def test_videos_to_kl_latents_to_dit_to_eval(tmp_path, train_cfg, monkeypatch):
    """DiT-ELT on UCF-101's layout with a diffusers AutoencoderKL run frame by frame: float16
    latents [4, T, 8, 8] in the shards, a 3-D latent DiT trained on them, FVD against the videos."""
    raw = make_ucf101(tmp_path / "ucf", classes=2, groups=2, frames=6)
    kl = save_tiny_kl(tmp_path / "kl")
    data = ["data=ucf101", "model=dit_elt", f"data.raw_root={raw}", f"data.root={tmp_path / 'shards'}",
            "data.frames=4", "data.resolution=16", "data.num_classes=2", "data.num_workers=0",
            "data.autoencoder._target_=elt.encoders.pretrained.DiffusersAutoencoderKL", f"data.autoencoder.path={kl}",
            "data.autoencoder.latent_shape=[4,4,8,8]", "~data.autoencoder.scale",
            # the trivial reference row decodes data.tokenizer's tokens: pixels here, not a MAGVIT file
            "data.tokenizer._target_=elt.encoders.tokenizers.PixelTokenizer", "~data.tokenizer.path", "~data.tokenizer.vocab_size",
            "~data.tokenizer.grid_shape", "~data.tokenizer.how_to_get", "+data.tokenizer.levels=17"]
    result = prepare(prepare_cfg(tmp_path, data, "prepare.shard_size=2"))
    s = result["train"]["settings"]
    assert (s["kind"], s["dtype"], s["shape"], s["encoder"]) == ("latent", "float16", [4, 4, 8, 8], "DiffusersAutoencoderKL")
    assert s["field"] == "moments.npy" and s["stored_shape"] == [2, 4, 4, 8, 8]  # the posterior: mean, log-variance
    assert s["preprocessing"]["crop"] == "resize_center_crop" and s["preprocessing"]["frames"] == 4
    assert s["preprocessing"]["split"] == "all" and result["train"]["num_samples"] == 4  # every video (MAGVIT protocol)
    assert result["val"]["num_samples"] == 2  # fold 1's test list
    latents = samples_of(tmp_path / "shards" / "train")
    assert all(v.dtype == np.float16 and v.shape == (2, 4, 4, 8, 8) for v, _ in latents.values())
    cfg = train_cfg(*data, "data.batch_size=2", "N=1", "Lmax=2", "model.patch_size=2", "model.ema_decay=null")
    out = train(cfg)
    assert out["ckpt_path"]
    rows = video_rows(out["ckpt_path"], tmp_path, "eval.sampler={steps:2,kind:ddim}")
    assert [r["row"] for r in rows] == ["real", "trivial", "model"] and all(r["fvd"] >= 0 for r in rows)


def test_images_to_kl_latents_to_dit_to_eval_with_the_raw_data_moved(imagenet, tmp_path, train_cfg, monkeypatch):
    """DiT-ELT on ImageNet's layout with a diffusers AutoencoderKL: float16 latents in the shards, a
    latent DiT trained on them without data.raw_root; eval finds the real images through its own
    data.raw_root, and needs no VQ tokenizer (the trivial row is the token models')."""
    kl = save_tiny_kl(tmp_path / "kl")  # 16x16 images -> 4x8x8 latents
    data = image_data(imagenet, tmp_path / "shards", "model=dit_elt", "data.resolution=16",
                      "data.autoencoder._target_=elt.encoders.pretrained.DiffusersAutoencoderKL", f"data.autoencoder.path={kl}",
                      "data.autoencoder.latent_shape=[4,8,8]")
    result = prepare(prepare_cfg(tmp_path, data))
    s = result["train"]["settings"]
    assert (s["kind"], s["dtype"], s["shape"], s["encoder"]) == ("latent", "float16", [4, 8, 8], "DiffusersAutoencoderKL")
    assert s["preprocessing"]["crop"] == "adm_center_crop" and result["train"]["num_samples"] == 12
    ae = instantiate(compose_cfg("prepare", data).data.autoencoder)
    raw, stored = ImageNetRaw(imagenet, "train", resolution=16), samples_of(tmp_path / "shards" / "train")
    moments, label = stored[raw.keys[3]]
    assert label == raw.labels[3]
    ae.net.net.eval()
    with torch.no_grad():  # the stored posterior, in latent units: mean x scale, log-variance + 2 log(scale)
        posterior = ae.net.net.encode(raw[3]["image"][None] * 2 - 1).latent_dist
    mean, std = (posterior.mean[0] * ae.scale).numpy(), (posterior.std[0] * ae.scale).numpy()
    assert moments.shape == (2, *mean.shape)
    np.testing.assert_allclose(moments[0], mean, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(np.exp(0.5 * moments[1].astype(np.float32)), std, rtol=5e-3, atol=1e-5)
    other = next(k for k, y in zip(raw.keys, raw.labels) if y != raw.labels[3])
    assert not np.allclose(moments, stored[other][0])  # another class's image, another posterior
    moved = [a for a in data if not a.startswith("data.raw_root=")]  # train from shards alone
    out = train(train_cfg(*moved, "data.batch_size=4", "N=1", "Lmax=2", "model.patch_size=2", "model.ema_decay=null"))
    assert out["ckpt_path"] and np.isfinite(out["metrics"]["train/loss"])
    monkeypatch.setitem(STANDARD_EXTRACTORS, "inception", lambda w: StandInInception(w, pixels=3 * 16 * 16))
    args = ["eval.extractors=[inception]", "eval.loops=[2]", "eval.samples_per_class=2", "eval.is_splits=1",
            "eval.sampler={steps:2,kind:ddim}"]
    with pytest.raises(ConfigError, match="pass data.raw_root=<raw data> to eval.py"):
        evaluate(eval_cfg(out["ckpt_path"], tmp_path / "eval0", tmp_path / "cache", *args))
    rows = evaluate(eval_cfg(out["ckpt_path"], tmp_path / "eval", tmp_path / "cache", *args,
                             f"data.raw_root={imagenet}"))["rows"]
    assert [r["row"] for r in rows] == ["real", "model"] and all(r["fid"] >= 0 for r in rows)
    assert rows[1]["loops"] == 2 and rows[1]["gflops_per_sample"] > 0


def test_videos_to_vq_tokens_frame_by_frame_to_maskgit_to_eval(tmp_path, train_cfg, monkeypatch):
    """MaskGIT-ELT on UCF-101's layout with a diffusers VQModel applied frame by frame: int16 tokens
    over a (T, h, w) grid in the shards, a video MaskGIT trained on them, FVD against the videos and
    the trivial row fitted from the shard tokens."""
    raw = make_ucf101(tmp_path / "ucf", classes=2, groups=2, frames=6)
    vq = save_tiny_vq(tmp_path / "vq")  # stride 2: 8x8 frames -> 4x4 tokens from 32 codes
    data = ["data=ucf101", "model=maskgit_elt", f"data.raw_root={raw}", f"data.root={tmp_path / 'shards'}",
            "data.frames=3", "data.resolution=8", "data.num_classes=2", "data.num_workers=0",
            "data.tokenizer._target_=elt.encoders.pretrained.DiffusersVQTokenizer", f"data.tokenizer.path={vq}",
            "data.tokenizer.vocab_size=32", "data.tokenizer.grid_shape=[3,4,4]"]
    result = prepare(prepare_cfg(tmp_path, data, "prepare.shard_size=2"))
    s = result["train"]["settings"]
    assert (s["kind"], s["dtype"], s["shape"], s["encoder"]) == ("tokens", "int16", [48], "DiffusersVQTokenizer")
    assert s["preprocessing"]["frames"] == 3 and result["train"]["num_samples"] == 4
    tok = instantiate(compose_cfg("prepare", data).data.tokenizer)
    clips, stored = instantiate(compose_cfg("prepare", data).data.raw.train), samples_of(tmp_path / "shards" / "train")
    tokens, label = stored[clips.keys[1]]
    video = clips[1]["image"]
    assert label == clips.labels[1] and video.shape == (3, 3, 8, 8)
    assert np.array_equal(tokens, tok.encode(video[None])[0].numpy())
    first_frame = tok.encode(video[:, :1].repeat(1, 3, 1, 1)[None])[0].numpy()[:16]
    assert np.array_equal(tokens[:16], first_frame)  # frame 0's tokens depend on frame 0 alone
    out = train(train_cfg(*data, "data.batch_size=2", "N=1", "Lmax=2"))
    assert out["ckpt_path"] and np.isfinite(out["metrics"]["train/loss"])
    rows = video_rows(out["ckpt_path"], tmp_path, "eval.sampler={steps:2}")
    assert [r["row"] for r in rows] == ["real", "trivial", "model"] and all(r["fvd"] >= 0 for r in rows)
    (ref,) = (tmp_path / "cache" / "reference").glob("ucf101_train_i3d_*.npz")  # the real clips' I3D statistics, cached
    with np.load(ref) as z:
        assert int(z["n"]) == 4 and z["mu"].shape == (36,)  # every video (MAGVIT protocol); TinyI3D: 36 features


def test_image_folder_to_vq_tokens_with_held_out_val(tmp_path, train_cfg):
    """A user's own class folders (no split folders): prepare holds out val per class and the
    shards train a MaskGIT-ELT exactly like ImageNet's."""
    folder = make_image_folder(tmp_path / "mine", classes=2, per_class=4)
    vq = save_tiny_vq(tmp_path / "vq")
    data = ["data=image_folder", f"data.raw_root={folder}", f"data.root={tmp_path / 'shards'}", "data.num_classes=2",
            "data.val_per_class=1", "data.resolution=16", "data.num_workers=0", f"data.tokenizer.path={vq}",
            "data.tokenizer.vocab_size=32", "data.tokenizer.grid_shape=[8,8]"]
    result = prepare(prepare_cfg(tmp_path, data))
    assert result["train"]["num_samples"] == 6 and result["val"]["num_samples"] == 2
    assert result["train"]["settings"]["preprocessing"]["reader"] == "ImageFolderRaw"
    train_keys, val_keys = set(samples_of(tmp_path / "shards" / "train")), set(samples_of(tmp_path / "shards" / "val"))
    assert len(train_keys) == 6 and len(val_keys) == 2 and not train_keys & val_keys
    assert sorted(label for _, label in samples_of(tmp_path / "shards" / "val").values()) == [0, 1]
    out = train(train_cfg(*data, "data.batch_size=3", "N=1", "Lmax=2"))
    assert out["ckpt_path"] and "val/loss_L2" in out["metrics"]


def test_prepare_resumes_keeping_finished_shards_and_redoing_the_partial_one(imagenet, tmp_path, monkeypatch):
    data = image_data(imagenet, tmp_path / "shards", *PIXEL_TOKENS)
    whole = prepare(prepare_cfg(tmp_path, image_data(imagenet, tmp_path / "whole", *PIXEL_TOKENS)))
    original_add, calls = ShardWriter.add, []

    def killed_at_item_10(self, *a, **k):
        calls.append(1)
        if len(calls) == 10:
            raise RuntimeError("killed")
        return original_add(self, *a, **k)

    monkeypatch.setattr(ShardWriter, "add", killed_at_item_10)
    with pytest.raises(RuntimeError, match="killed"):
        prepare(prepare_cfg(tmp_path, data, "prepare.splits=[train]"))
    train_dir = tmp_path / "shards" / "train"
    assert sorted(p.name for p in train_dir.glob("shard-*.tar")) == ["shard-00000.tar", "shard-00001.tar"]
    assert [p.name for p in train_dir.glob(".shard-*.tmp")] == [".shard-00002.tar.tmp"]  # the partial one
    assert read_index(train_dir)["complete"] is False
    kept = {p.name: p.stat().st_mtime_ns for p in train_dir.glob("shard-*.tar")}
    monkeypatch.undo()
    written, original_open = [], ShardWriter.open_for
    monkeypatch.setattr(ShardWriter, "open_for", lambda self, i: written.append(self.shard_of[i])
                        or original_open(self, i))
    again = prepare(prepare_cfg(tmp_path, data))
    # per item written: train's last shard only, then val's two
    assert written == ["shard-00002.tar"] * 4 + ["shard-00000.tar"] * 4 + ["shard-00001.tar"] * 2
    assert {p: (train_dir / p).stat().st_mtime_ns for p in kept} == kept
    assert not list(train_dir.glob(".shard-*"))
    for split in ("train", "val"):
        assert again[split]["shards"] == whole[split]["shards"]
        for shard in whole[split]["shards"]:  # byte-identical to the uninterrupted run
            a = (tmp_path / "whole" / split / shard["name"]).read_bytes()
            assert a == (tmp_path / "shards" / split / shard["name"]).read_bytes()
    written.clear()
    prepare(prepare_cfg(tmp_path, data))  # complete: nothing to do
    assert written == []


def test_prepare_refuses_another_encoder_or_preprocessing_in_one_line(imagenet, tmp_path, capsys):
    data = image_data(imagenet, tmp_path / "shards", *PIXEL_TOKENS)
    prepare(prepare_cfg(tmp_path, data, "prepare.splits=[val]"))
    for more, words in ((["data.tokenizer.levels=9"], ["fingerprint", "PixelTokenizer"]),
                        (["data.raw.val.flip=both"], ["preprocessing", "flip"])):
        with pytest.raises(SystemExit) as exit_:
            run_cli(prepare, prepare_cfg(tmp_path, data, "prepare.splits=[val]", *more))
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and "refusing to add to" in err[0], err
        assert all(w in err[0] for w in words) and str(tmp_path / "shards" / "val") in err[0]


def test_prepare_without_raw_root_names_it_and_where_to_get_imagenet(tmp_path, capsys):
    cfg = compose_cfg("prepare", ["data=imagenet", f"data.root={tmp_path}"], tmp_path / "out")
    with pytest.raises(SystemExit) as exit_:
        run_cli(prepare, cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert "data.raw_root" in err[0] and "ILSVRC-2012" in err[0] and "image-net.org" in err[0]
    assert not list(tmp_path.iterdir()) or [p.name for p in tmp_path.iterdir()] == ["out"]


def damaged(shard: Path, key: str, how: str) -> None:
    """Rewrite ``shard`` with sample ``key``'s array replaced by junk, or cut the file inside it."""
    members = []
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            members.append((m, tar.extractfile(m).read()))
    if how == "truncate":
        offset = next(m.offset_data for m, _ in members if m.name.startswith(key + "."))
        shard.write_bytes(shard.read_bytes()[:offset + 10])
        return
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if m.name == f"{key}.tokens.npy":
                data = b"not an npy file at all"
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def first_epoch(dm) -> list[dict]:
    return [dm.on_after_batch_transfer(b, 0) for b in dm.train_dataloader()]


def test_damaged_shards_name_shard_and_key_or_are_skipped_and_counted(imagenet, tmp_path, train_cfg, caplog, capsys):
    data = image_data(imagenet, tmp_path / "shards", *PIXEL_TOKENS)
    prepare(prepare_cfg(tmp_path, data, "prepare.splits=[train]"))
    shard = tmp_path / "shards" / "train" / "shard-00001.tar"
    key = next(s["__key__"] for s in read_shard(str(shard)))
    damaged(shard, key, "junk")
    cfg = train_cfg(*data, "data.batch_size=2")
    dm = instantiate(cfg.data.module)
    dm.setup("fit")  # the same size (tar blocks): found by the stream
    with pytest.raises(ValueError, match=f"corrupt shard {shard}: (sample {key}: cannot decode|its bytes differ from "
                                         f"those written)"):
        first_epoch(dm)  # the checksum, once the shuffle buffer has read the shard whole, or the bad sample
    dm.skip_bad, dm.max_bad_fraction = True, 0.3
    with caplog.at_level(logging.WARNING):
        batches = first_epoch(dm)
    # the junk sample and the shard's checksum are counted; training goes on
    assert len(batches) == 6 and dm.skipped >= 2 and key not in {k for b in batches for k in b["key"]}
    assert "bad sample(s) skipped so far" in caplog.text and "checksum" in caplog.text
    dm.max_bad_fraction = 0.01  # over the bar: the line says the setting, not "set data.skip_bad=true" again
    with pytest.raises(ValueError, match="more than data.max_bad_fraction=0.01 allows with data.skip_bad=true") as e:
        first_epoch(dm)
    assert "set data.skip_bad=true" not in str(e.value)
    damaged(shard, key, "truncate")
    with pytest.raises(ValueError, match=rf"index.json disagrees with its shards: {shard} is \d+ bytes, the index says"):
        instantiate(cfg.data.module).setup("fit")  # another size than written: refused before training
    with pytest.raises(SystemExit) as exit_:  # through train.py's job: one line
        run_cli(train, cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and str(shard) in err[0], err
    out = train(train_cfg(*data, "data.batch_size=2", "data.skip_bad=true", "data.max_bad_fraction=0.5"))
    assert out["ckpt_path"]  # the truncated shard's tail (4 samples of 12) skipped, counted


def test_a_shard_cut_at_a_tar_block_boundary_is_short_against_the_index(imagenet, tmp_path):
    """What an interrupted copy leaves: a tar that ends cleanly after whole samples. The index's
    sample count catches it (the size check is bypassed here to reach the stream)."""
    data = image_data(imagenet, tmp_path / "shards", *PIXEL_TOKENS)
    index = prepare(prepare_cfg(tmp_path, data, "prepare.splits=[train]"))["train"]
    shard = tmp_path / "shards" / "train" / "shard-00001.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:  # the first 2 of 4 samples, a valid tar
        for m, b in members[:4]:
            tar.addfile(m, io.BytesIO(b))
    batches = list(ShardStream(tmp_path / "shards" / "train", index, 2, 0, 1, train=False))
    assert f"corrupt shard {shard}: holds 2 samples, the index says 4" in batches[-1]["error"]


def stream(index, split_dir, rank, world, **kw):
    return ShardStream(split_dir, index, 2, rank, world, train=True, batches=kw.pop("batches", 3), seed=7, **kw)


def test_the_stream_splits_ranks_disjointly_is_deterministic_and_resumes_exactly(imagenet, tmp_path):
    data = image_data(imagenet, tmp_path / "shards", *PIXEL_TOKENS)
    index = prepare(prepare_cfg(tmp_path, data, "prepare.splits=[train]", "prepare.shard_size=3"))["train"]
    split_dir = tmp_path / "shards" / "train"

    def keys(s):
        return [k for b in s for k in b["key"]]

    ranks = [keys(stream(index, split_dir, r, 2)) for r in (0, 1)]  # 4 shards of 3: 6 samples per rank
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == sorted(ImageNetRaw(imagenet).keys)
    assert keys(stream(index, split_dir, 0, 2)) == ranks[0]  # a pure function of (seed, epoch, rank)
    later = stream(index, split_dir, 0, 2)
    later.epoch = 1
    assert keys(later) != ranks[0]
    resumed = stream(index, split_dir, 0, 2)
    resumed.skip = 1  # one batch already trained on
    assert keys(resumed) == ranks[0][2:]
    # DataLoader workers split the rank's shards further; the rank still covers its samples once
    loader = torch.utils.data.DataLoader(stream(index, split_dir, 0, 1, batches=6), batch_size=None, num_workers=2)
    seen = [k for b in loader for k in b["key"]]
    assert sorted(seen) == sorted(ImageNetRaw(imagenet).keys)


def test_without_raw_root_eval_datasets_say_what_they_need(imagenet, tmp_path, train_cfg):
    data = image_data(imagenet, tmp_path / "shards", *PIXEL_TOKENS)
    prepare(prepare_cfg(tmp_path, data))
    dm = instantiate(train_cfg(*image_data(None, tmp_path / "shards", *PIXEL_TOKENS)).data.module)
    dm.setup()
    assert len(dm.train_dataset) == 12 and len(dm.val_dataset) == 6  # sizes from the index
    with pytest.raises(ConfigError, match="data.raw_root.*eval.reference_stats"):
        dm.val_dataset.labels
    dm = instantiate(train_cfg(*data).data.module)
    assert dm.val_dataset.labels == [0, 1, 2, 0, 1, 2] and dm.val_dataset[4]["image"].shape == (3, 8, 8)
    assert encoder_fingerprint(instantiate(compose_cfg("prepare", data).data.tokenizer)) == \
        read_index(tmp_path / "shards" / "val")["settings"]["fingerprint"]


def test_training_refuses_shards_of_another_family_or_encoder(imagenet, tmp_path, train_cfg, capsys):
    data = image_data(imagenet, tmp_path / "shards", *PIXEL_TOKENS)
    prepare(prepare_cfg(tmp_path, data, "prepare.splits=[train]"))
    for more, words in ((["data.tokenizer.levels=9"], "the model's PixelTokenizer is"),
                        (["model=dit_elt", "data/autoencoder=pixels"], "holds tokens but DiTELT")):
        with pytest.raises(SystemExit):
            run_cli(train, train_cfg(*data, "data.batch_size=2", *more))
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def test_uneven_shards_on_two_ranks_are_read_disjointly_and_cover_the_epoch(imagenet, tmp_path):
    """3 shards of 4 on 2 ranks, batch 2 (the case that read 2 samples twice and 2 never): whole shards
    go one per reader slot, the rest is split by sample; ranks simulated in-process."""
    from elt.data.shards.datamodule import ShardDataModule

    data = image_data(imagenet, tmp_path / "shards", *PIXEL_TOKENS)
    index = prepare(prepare_cfg(tmp_path, data, "prepare.splits=[train]"))["train"]
    assert [s["samples"] for s in index["shards"]] == [4, 4, 4]
    dm = ShardDataModule(str(tmp_path / "shards"), batch_size=2, name="imagenet", num_classes=3, image_shape=[3, 8, 8])
    batches = dm.batches_per_epoch(index, world=2)
    assert batches == 3  # 6 samples per rank
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            s = stream(index, tmp_path / "shards" / "train", rank, 2, batches=batches)
            s.epoch = epoch
            seen.append([k for b in s for k in b["key"]])
        assert len(seen[0]) == len(seen[1]) == 6 and not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == sorted(ImageNetRaw(imagenet).keys)  # every sample once
    dm.num_workers = 2  # 2 ranks x 2 workers over 3 shards: still disjoint, 3 samples per slot -> 1 batch each
    assert dm.batches_per_epoch(index, world=2) == 2
    with pytest.raises(ConfigError, match=r"data.batch_size \(2\) x 8 rank\(s\) x 2 worker\(s\) is more than the 12"):
        dm.batches_per_epoch(index, world=8)


def test_training_from_shards_resumes_mid_epoch_bit_exactly(imagenet, tmp_path, train_cfg):
    """The shard stream's position is in the checkpoint: resuming at step 3 of a 6-batch epoch ends
    where the uninterrupted run ends (and another shuffle seed does not)."""
    data = image_data(imagenet, tmp_path / "shards", *PIXEL_TOKENS)
    prepare(prepare_cfg(tmp_path, data))
    common = [*data, "data.batch_size=2", "N=1", "Lmax=2", "trainer.max_steps=5", "logger=csv",
              "callbacks.model_checkpoint.every_n_train_steps=3"]
    reference = train(in_dir(train_cfg(*common), tmp_path / "a"))
    step3 = tmp_path / "a" / "checkpoints" / "step000003.ckpt"
    assert torch.load(step3, weights_only=False)["global_step"] == 3
    resumed = train(in_dir(train_cfg(*common, f"ckpt_path={step3}"), tmp_path / "b"))
    assert_same_weights(weights(reference["ckpt_path"]), weights(resumed["ckpt_path"]))
    other = train(in_dir(train_cfg(*common, "seed=1"), tmp_path / "c"))
    with pytest.raises(AssertionError):
        assert_same_weights(weights(reference["ckpt_path"]), weights(other["ckpt_path"]))


@pytest.mark.slow  # prepare.py, train.py and eval.py as processes
def test_the_three_entry_points_from_the_command_line(tmp_path):
    """What the README tells a UCF-101 user to type: prepare.py, train.py, eval.py as processes."""
    import os
    import subprocess
    import sys

    def cli(script: str, *args: str) -> str:
        env = {**os.environ, "ELT_ROOT": str(ROOT), "OMP_NUM_THREADS": "1"}
        p = subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout

    raw = make_ucf101(tmp_path / "ucf", classes=2, groups=2, frames=6)
    vq = save_tiny_vq(tmp_path / "vq")
    weights = tmp_path / "i3d.pt"
    torch.jit.script(TinyI3D()).save(str(weights))
    data = ["data=ucf101", "model=maskgit_elt", f"data.raw_root={raw}", f"data.root={tmp_path / 'shards'}",
            "data.frames=2", "data.resolution=8", "data.num_classes=2", "data.num_workers=0",
            "data.tokenizer._target_=elt.encoders.pretrained.DiffusersVQTokenizer", f"data.tokenizer.path={vq}",
            "data.tokenizer.vocab_size=32", "data.tokenizer.grid_shape=[2,4,4]", f"paths.cache_dir={tmp_path / 'cache'}"]
    cli("prepare.py", *data, "prepare.shard_size=2", "prepare.num_workers=0", f"hydra.run.dir={tmp_path / 'prep'}")
    assert read_index(tmp_path / "shards" / "train")["complete"]
    run = tmp_path / "run"
    cli("train.py", *data, "scale=tiny", "N=1", "Lmax=2", "data.batch_size=2", "trainer.max_steps=2",
        "trainer.enable_progress_bar=false", "logger=none", f"hydra.run.dir={run}")
    out = cli("eval.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={run / 'eval'}",
              "eval.extractors=[i3d]", f"eval.weights.i3d={weights}", "eval.loops=[2]", "eval.samples_per_class=1",
              "eval.is_splits=1", "eval.sampler={steps:2}", "eval.progress=false", f"paths.cache_dir={tmp_path / 'cache'}")
    assert "fvd" in out.lower() and (run / "eval" / "loops" / "L2.json").is_file()


def test_dit_on_posterior_shards_with_random_flips_resumes_mid_epoch_bit_exactly(imagenet, tmp_path, train_cfg):
    """Per-step posterior samples and flips come from the (seed, rank, batch counter) generator: a run
    resumed at step 3 ends where the uninterrupted one ends."""
    kl = save_tiny_kl(tmp_path / "kl")
    data = image_data(imagenet, tmp_path / "shards", "model=dit_elt", "data.resolution=16", "data.flip=random",
                      "data.autoencoder._target_=elt.encoders.pretrained.DiffusersAutoencoderKL",
                      f"data.autoencoder.path={kl}", "data.autoencoder.latent_shape=[4,8,8]")
    index = prepare(prepare_cfg(tmp_path, data, "prepare.splits=[train]"))["train"]
    assert index["settings"]["flips"] and index["settings"]["field"] == "moments.npy"
    common = [*data, "data.batch_size=2", "N=1", "Lmax=2", "model.patch_size=2", "model.ema_decay=null",
              "trainer.max_steps=5", "logger=csv", "callbacks.model_checkpoint.every_n_train_steps=3",
              "trainer.limit_val_batches=0"]
    reference = train(in_dir(train_cfg(*common), tmp_path / "a"))
    step3 = tmp_path / "a" / "checkpoints" / "step000003.ckpt"
    resumed = train(in_dir(train_cfg(*common, f"ckpt_path={step3}"), tmp_path / "b"))
    assert_same_weights(weights(reference["ckpt_path"]), weights(resumed["ckpt_path"]))


def epochs_of(loader, epochs: list[int], trainer) -> list[list[tuple]]:
    """Each epoch's batches as (keys, label tensor, token tensor), the epoch set on the (stand-in) trainer."""
    out = []
    for e in epochs:
        trainer.current_epoch = e
        out.append([(b["key"], b["label"], b["tokens"]) for b in loader])
    return out


def test_persistent_workers_read_the_stream_fresh_workers_read_across_epochs_and_on_resume(imagenet, tmp_path):
    """Kept workers hold the stream they started with: the epoch and the batches to skip must still
    reach them. 3 epochs of 6 batches (2 workers) with kept workers = with fresh ones; a run resumed
    3 batches into epoch 1 reads the rest of it in order (its next batch is worker 1's), then epoch 2."""
    from types import SimpleNamespace

    from elt.data.shards.datamodule import ShardDataModule

    data = image_data(imagenet, tmp_path / "shards", *PIXEL_TOKENS)
    prepare(prepare_cfg(tmp_path, data, "prepare.splits=[train]"))

    def loader(persistent, resume=(0, 0)):
        dm = ShardDataModule(str(tmp_path / "shards"), batch_size=2, name="imagenet", num_classes=3,
                             image_shape=[3, 8, 8], num_workers=2, persistent_workers=persistent)
        dm.shuffle_seed = 7
        dm._resume.update(epoch=resume[0], batches=resume[1])
        dm.trainer = trainer
        return dm.train_dataloader()

    trainer = SimpleNamespace(current_epoch=0, world_size=1, global_rank=0,
                              strategy=SimpleNamespace(root_device=torch.device("cpu")))
    fresh, kept = loader(False), loader("auto")
    assert kept.persistent_workers and not fresh.persistent_workers and not kept.pin_memory  # auto on a CPU
    rng = torch.get_rng_state()
    ref = epochs_of(fresh, [0, 1, 2], trainer)
    assert [len(e) for e in ref] == [6, 6, 6] and [k for k, _, _ in ref[0]] != [k for k, _, _ in ref[1]]

    def same(a, b):
        assert [k for k, _, _ in a] == [k for k, _, _ in b]
        for (_, la, xa), (_, lb, xb) in zip(a, b):
            assert torch.equal(la, lb) and torch.equal(xa, xb)

    for a, b in zip(ref, epochs_of(kept, [0, 1, 2], trainer)):
        same(a, b)
    resumed = epochs_of(loader("auto", resume=(1, 3)), [1, 2], trainer)
    same(resumed[0], ref[1][3:])
    same(resumed[1], ref[2])
    assert torch.equal(rng, torch.get_rng_state())  # the loaders drew their seeds from their own generators


def test_loader_options_resolve_auto_and_refuse_bad_values_in_one_line(imagenet, tmp_path, train_cfg, capsys):
    from types import SimpleNamespace

    from elt.data.shards.datamodule import ShardDataModule

    def dm(**kw):
        return ShardDataModule(str(tmp_path), batch_size=2, name="imagenet", num_classes=3, image_shape=[3, 8, 8], **kw)

    on = dm(num_workers=2)
    assert on.loader_options(2, "train")["pin_memory"] is False  # no trainer: nothing to pin for
    for device, pinned in (("cpu", False), ("cuda", True)):
        on.trainer = SimpleNamespace(world_size=1, global_rank=0, strategy=SimpleNamespace(root_device=torch.device(device)))
        opts = on.loader_options(2, "train")
        assert opts["pin_memory"] is pinned and opts["persistent_workers"] and opts["prefetch_factor"] == 2
    off = dm(num_workers=0).loader_options(0, "train")
    assert not off["persistent_workers"] and off["prefetch_factor"] is None  # what DataLoader wants without workers
    assert dm(num_workers=2, pin_memory=True, persistent_workers=False).loader_options(2, "val")["pin_memory"] is True
    for kw, words in ((dict(pin_memory="yes"), "data.pin_memory must be auto, true or false, got 'yes'"),
                      (dict(persistent_workers=1), "data.persistent_workers must be auto, true or false, got 1"),
                      (dict(prefetch_factor=0), "data.prefetch_factor must be an integer >= 1"),
                      (dict(prefetch_factor=2.5), "data.prefetch_factor must be an integer >= 1"),
                      (dict(persistent_workers=True), r"data.persistent_workers=true needs loader workers")):
        with pytest.raises(ConfigError, match=words):
            dm(**kw)
    data = image_data(imagenet, tmp_path / "shards", *PIXEL_TOKENS)
    with pytest.raises(SystemExit):  # through train.py's job: one line naming the key
        run_cli(train, train_cfg(*data, "data.prefetch_factor=0"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.prefetch_factor" in err[0], err


def test_training_with_persistent_workers_resumes_across_an_epoch_boundary_bit_exactly(imagenet, tmp_path, train_cfg):
    """train.py with 2 kept loader workers (6 batches an epoch): 8 steps end where fresh workers end, and
    so does a run resumed at step 3, whose kept workers then start epoch 1 from its beginning."""
    data = [o for o in image_data(imagenet, tmp_path / "shards", *PIXEL_TOKENS) if o != "data.num_workers=0"]
    prepare(prepare_cfg(tmp_path, data))
    common = [*data, "data.num_workers=2", "data.batch_size=2", "N=1", "Lmax=2", "trainer.max_steps=8", "logger=csv",
              "callbacks.model_checkpoint.every_n_train_steps=3"]
    reference = train(in_dir(train_cfg(*common), tmp_path / "a"))
    fresh = train(in_dir(train_cfg(*common, "data.persistent_workers=false"), tmp_path / "b"))
    assert_same_weights(weights(reference["ckpt_path"]), weights(fresh["ckpt_path"]))
    step3 = tmp_path / "a" / "checkpoints" / "step000003.ckpt"
    resumed = train(in_dir(train_cfg(*common, f"ckpt_path={step3}"), tmp_path / "c"))
    assert_same_weights(weights(reference["ckpt_path"]), weights(resumed["ckpt_path"]))
