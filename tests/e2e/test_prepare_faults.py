"""prepare.py under faults: killed at every stage (in-process and, slow, SIGKILL on 1 and 2 ranks),
stopped by SIGTERM / SIGUSR1, a full disk, another encoder's leftovers; deterministic shards; counted
drops. Every rerun must finish with shards whose samples are byte-identical to an uninterrupted run."""
from __future__ import annotations

import errno
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from elt.data.shards.format import read_index
from elt.data.shards.writer import FAULT_ENV, STAGES, FaultInjected, ShardWriter
from elt.jobs.prepare import prepare
from elt.runtime.cli import run_cli
from support.config import ROOT, child_env, compose_cfg
from support.miniature import make_imagenet, make_ucf101
from support.stand_ins import save_tiny_kl

PIXEL_TOKENS = ["data.tokenizer._target_=elt.encoders.tokenizers.PixelTokenizer", "~data.tokenizer.path",
                "~data.tokenizer.vocab_size", "~data.tokenizer.grid_shape", "+data.tokenizer.levels=17"]


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """3 classes x 4 train images (12 items: shards of 4 -> 3 shards), 1 val image per class."""
    return make_imagenet(tmp_path_factory.mktemp("ilsvrc"), wnids=3, per_class=4, val_per_class=1)


def data_args(raw: Path, root: Path, *more: str) -> list[str]:
    return ["data=imagenet", f"data.raw_root={raw}", f"data.root={root}", "data.resolution=8", "data.num_classes=3",
            "data.num_workers=0", *PIXEL_TOKENS, *more]


def cfg_of(tmp_path: Path, raw: Path, root: Path, *more: str):
    return compose_cfg("prepare", [*data_args(raw, root), "prepare.shard_size=4", "prepare.batch_size=3",
                                   "prepare.num_workers=0", "trainer.enable_progress_bar=false",
                                   f"paths.cache_dir={tmp_path / 'cache'}", *more], tmp_path / "prep")


def samples_of(split_dir: Path) -> dict[str, bytes]:
    """key -> the bytes of all its members, over every shard of a split."""
    out = {}
    for shard in sorted(Path(split_dir).glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key = m.name.split(".", 1)[0]
                out[key] = out.get(key, b"") + m.name.encode() + tar.extractfile(m).read()
    return out


def same_shards(a: Path, b: Path, splits=("train", "val")) -> None:
    for split in splits:
        ia, ib = read_index(a / split), read_index(b / split)
        assert ia["complete"] and ib["complete"]
        assert ia["shards"] == ib["shards"]  # names, counts, sizes, checksums
        assert samples_of(a / split) == samples_of(b / split)  # per sample, byte for byte
        assert not list((b / split).glob(".*"))  # no temporary file left


@pytest.fixture(scope="module")
def reference(imagenet, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("reference")
    prepare(cfg_of(tmp, imagenet, tmp / "shards"))
    return tmp / "shards"


@pytest.mark.parametrize("stage", STAGES)
def test_a_kill_at_any_stage_is_finished_by_the_same_command(imagenet, reference, tmp_path, monkeypatch, stage):
    monkeypatch.setenv(FAULT_ENV, f"{stage}:raise")
    with pytest.raises(FaultInjected):
        prepare(cfg_of(tmp_path, imagenet, tmp_path / "shards"))
    assert not read_index(tmp_path / "shards" / "train")["complete"]
    monkeypatch.delenv(FAULT_ENV)
    again = prepare(cfg_of(tmp_path, imagenet, tmp_path / "shards"))
    assert again["train"]["num_samples"] == 12
    same_shards(reference, tmp_path / "shards")


def test_shards_are_byte_identical_for_any_batch_size_and_workers(imagenet, reference, tmp_path):
    prepare(cfg_of(tmp_path, imagenet, tmp_path / "shards", "prepare.batch_size=5", "prepare.num_workers=2"))
    same_shards(reference, tmp_path / "shards")


def test_autoencoder_kl_shards_are_deterministic_posterior_or_seeded_sample(imagenet, tmp_path):
    """The posterior's moments need no randomness; prepare.posterior=sample draws each image's latent
    from (prepare.seed, key), so batch size and workers do not change it and the seed does."""
    kl = save_tiny_kl(tmp_path / "kl")
    ae = ["model=dit_elt", "data.resolution=16", "data.autoencoder._target_=elt.encoders.pretrained.DiffusersAutoencoderKL",
          f"data.autoencoder.path={kl}", "data.autoencoder.latent_shape=[4,8,8]", "prepare.splits=[val]"]
    runs = {}
    for name, more in (("a", []), ("b", ["prepare.batch_size=2", "prepare.num_workers=1"]),
                       ("sa", ["prepare.posterior=sample"]), ("sb", ["prepare.posterior=sample", "prepare.batch_size=1"]),
                       ("s1", ["prepare.posterior=sample", "prepare.seed=1"])):
        prepare(cfg_of(tmp_path / name, imagenet, tmp_path / name / "shards", *ae, *more))
        runs[name] = samples_of(tmp_path / name / "shards" / "val")
    assert runs["a"] == runs["b"] and runs["sa"] == runs["sb"]
    assert runs["sa"] != runs["s1"] and set(runs["sa"]) == set(runs["s1"])
    assert read_index(tmp_path / "a" / "shards" / "val")["settings"]["stored_shape"] == [2, 4, 8, 8]


def test_sigterm_and_sigusr1_stop_at_the_next_shard_boundary_and_the_command_resumes(imagenet, reference, tmp_path,
                                                                                   monkeypatch, capsys):
    original = ShardWriter.add
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGUSR1, 138)):
        sent = []

        def add(self, index, *a, **k):
            original(self, index, *a, **k)
            if index == 5 and not sent:  # the second item of shard 1
                sent.append(sig)
                os.kill(os.getpid(), sig)

        monkeypatch.setattr(ShardWriter, "add", add)
        out = tmp_path / sig.name
        with pytest.raises(SystemExit) as exit_:
            run_cli(prepare, cfg_of(tmp_path, imagenet, out, "prepare.splits=[train]"))
        assert exit_.value.code == code
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{sig.name}: prepare stopped at a shard boundary" in err[0], err
        finished = sorted(p.name for p in (out / "train").glob("shard-*.tar"))
        assert finished == ["shard-00000.tar", "shard-00001.tar"]  # shard 1 finished, then stopped
        assert sorted(p.name for p in (out / "train").glob("shard-*.json")) == ["shard-00000.json", "shard-00001.json"]
        monkeypatch.setattr(ShardWriter, "add", original)
        prepare(cfg_of(tmp_path, imagenet, out))
        same_shards(reference, out)


def test_a_full_disk_names_the_file_and_loses_nothing_finished(imagenet, reference, tmp_path, monkeypatch):
    import webdataset as wds

    original, calls = wds.TarWriter.write, []

    def full(self, sample):
        calls.append(1)
        if len(calls) == 6:  # the second sample of shard 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, sample)

    monkeypatch.setattr(wds.TarWriter, "write", full)
    out = tmp_path / "shards"
    with pytest.raises(OSError) as e:
        prepare(cfg_of(tmp_path, imagenet, out, "prepare.splits=[train]"))
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out / "train" / ".shard-00001.tar.tmp")
    first = (out / "train" / "shard-00000.tar").read_bytes()
    assert json.loads((out / "train" / "shard-00000.json").read_text())["samples"] == 4
    monkeypatch.setattr(wds.TarWriter, "write", original)
    prepare(cfg_of(tmp_path, imagenet, out))
    assert (out / "train" / "shard-00000.tar").read_bytes() == first
    same_shards(reference, out)


def test_another_encoders_finished_shards_are_refused_even_without_the_index(imagenet, tmp_path, monkeypatch, capsys):
    out = tmp_path / "shards"
    monkeypatch.setenv(FAULT_ENV, "between_shards:raise")
    with pytest.raises(FaultInjected):
        prepare(cfg_of(tmp_path, imagenet, out, "prepare.splits=[train]"))
    monkeypatch.delenv(FAULT_ENV)
    (out / "train" / "index.json").unlink()  # lost
    with pytest.raises(SystemExit) as exit_:
        run_cli(prepare, cfg_of(tmp_path, imagenet, out, "prepare.splits=[train]", "data.tokenizer.levels=9"))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "shard-00000.tar was encoded by fingerprint" in err[0], err


def test_an_index_that_disagrees_with_its_shards_is_refused(imagenet, reference, tmp_path, train_cfg):
    import shutil

    shutil.copytree(reference, tmp_path / "shards")
    path = tmp_path / "shards" / "train" / "index.json"
    index = json.loads(path.read_text())
    index["num_samples"] += 1
    path.write_text(json.dumps(index))
    dm = instantiate(train_cfg(*data_args(Path("/nonexistent"), tmp_path / "shards"), "data.batch_size=2").data.module)
    with pytest.raises(ValueError, match="index.json disagrees with its shards: its shards hold 12 samples"):
        dm.setup("fit")
    index["num_samples"] -= 1
    index["shards"][1]["sha256"] = "0" * 16  # rewritten: the sidecar no longer agrees
    path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="shard-00001.tar has sidecar fingerprint"):
        dm.setup("fit")


def test_flip_random_stores_both_encodings_and_training_picks_one_per_sample_per_step(imagenet, tmp_path, train_cfg):
    from elt.data.raw.images import ImageNetRaw
    from elt.data.shards.reader import read_shard

    out = tmp_path / "shards"
    prepare(cfg_of(tmp_path, imagenet, out, "prepare.splits=[train]", "data.flip=random"))
    index = read_index(out / "train")
    assert index["settings"]["flips"] and index["num_samples"] == 12  # one sample per image
    raw = ImageNetRaw(imagenet, "train", resolution=8)
    sample = next(read_shard(str(out / "train" / "shard-00000.tar")))
    tokens = np.load(io.BytesIO(sample["tokens.npy"]))
    mirror = np.load(io.BytesIO(sample["flip.tokens.npy"]))
    image = raw[0]["image"]
    levels = 17
    assert np.array_equal(tokens, (image * (levels - 1)).round().long().flatten().numpy())
    assert np.array_equal(mirror, (image.flip(-1) * (levels - 1)).round().long().flatten().numpy())
    dm = instantiate(train_cfg(*data_args(imagenet, out, "data.flip=random"), "data.batch_size=6").data.module)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["tokens_flip"].shape == batch["tokens"].shape == (6, 3 * 8 * 8)
    batch["tokens_flip"] = batch["tokens"] + 100  # the miniature images are solid colours: make the mirror tell

    def picks(seed):
        dm.shuffle_seed = seed
        return (dm.augment(dict(batch))["tokens"] >= 100).all(1).long()

    first = picks(0)
    assert torch.equal(first, picks(0))  # a pure function of (seed, rank, batch counter): resume draws the same
    assert any(0 < int(picks(s).sum()) < 6 for s in range(4))  # per sample, not per batch
    assert any(not torch.equal(picks(s), first) for s in (1, 2, 3))
    dm.shuffle_seed = 0
    out = dm.augment(dict(batch))["tokens"]
    for i, mirrored in enumerate(first.tolist()):
        assert torch.equal(out[i], batch["tokens_flip"][i] if mirrored else batch["tokens"][i])
    plain = instantiate(train_cfg(*data_args(imagenet, tmp_path / "plain"), "data.batch_size=6").data.module)
    prepare(cfg_of(tmp_path, imagenet, tmp_path / "plain", "prepare.splits=[train]"))
    refused = instantiate(train_cfg(*data_args(imagenet, tmp_path / "plain", "data.flip=random"),
                                    "data.batch_size=6").data.module)
    with pytest.raises(Exception, match="data.flip=random needs shards that hold each image's mirror"):
        refused.setup("fit")
    plain.setup("fit")


def test_posterior_moments_give_a_fresh_latent_per_step_or_the_mean():
    from elt.data.shards.datamodule import ShardDataModule

    dm = ShardDataModule("/nonexistent", batch_size=2, name="x", num_classes=2, image_shape=[3, 8, 8])
    mean, logvar = torch.randn(2, 4, 2, 2), torch.full((2, 4, 2, 2), -2.0)
    moments = torch.stack([mean, logvar], 1)
    a, b = dm.augment({"moments": moments.clone()})["latent"], dm.augment({"moments": moments.clone()})["latent"]
    assert torch.equal(a, b) and not torch.allclose(a, mean)  # a sample, the same for the same (seed, rank, step)
    assert abs(float(((a - mean) / logvar.mul(0.5).exp()).std()) - 1) < 0.5
    dm.posterior_sample = False
    assert torch.equal(dm.augment({"moments": moments.clone()})["latent"], mean)


def test_ucf_missing_list_entries_and_short_clips_are_counted_in_the_index(tmp_path, caplog):
    raw = make_ucf101(tmp_path / "ucf", classes=2, groups=2, frames=3)  # clips of 4 frames: every video padded
    gone = next((raw / "UCF-101").rglob("*.avi"))
    gone.unlink()
    args = ["data=ucf101", f"data.raw_root={raw}", f"data.root={tmp_path / 'shards'}", "data.frames=4",
            "data.resolution=8", "data.num_classes=2", "data.num_workers=0", *PIXEL_TOKENS, "~data.tokenizer.how_to_get",
            "prepare.splits=[train]", "prepare.shard_size=2", "prepare.num_workers=0", "trainer.enable_progress_bar=false"]
    with caplog.at_level(logging.INFO):
        index = prepare(compose_cfg("prepare", args, tmp_path / "prep"))["train"]
    assert index["num_samples"] == 3 and index["missing"] == 1 and index["padded"] == 3
    assert "1 video(s) named in" in caplog.text and gone.name in caplog.text
    assert "3 short clip(s) padded with their last frame, 1 list entr(ies) whose file is missing" in caplog.text


# ---- real processes: SIGKILL on 1 and 2 ranks --------------------------------------------------------
def run_prepare(tmp_path: Path, raw: Path, root: Path, ranks: int, fault: str | None = None) -> subprocess.CompletedProcess:
    env = child_env()
    if fault:
        env[FAULT_ENV] = fault
    dist = (["trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={ranks}", "trainer.precision=32-true"]
            if ranks > 1 else [])
    cmd = [sys.executable, "prepare.py", *data_args(raw, root), "prepare.shard_size=2", "prepare.batch_size=3",
           "prepare.num_workers=0", "trainer.enable_progress_bar=false", *dist, f"hydra.run.dir={tmp_path / 'prep'}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # prepare.py as processes, killed with SIGKILL at every stage on 1 and 2 ranks
@pytest.mark.parametrize("ranks,fault,rerun_ranks", [
    (1, "mid_shard", 1), (1, "between_shards", 1), (1, "after_last_shard", 1), (1, "merge", 1),
    (2, "mid_shard@1", 2), (2, "between_shards@0", 2), (2, "after_last_shard@0", 2), (2, "merge", 2),
    (2, "between_shards@1", 1), (1, "between_shards", 2)])
def test_sigkill_at_every_stage_on_one_and_two_ranks(imagenet, tmp_path, ranks, fault, rerun_ranks):
    whole = run_prepare(tmp_path / "w", imagenet, tmp_path / "whole", 1)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = run_prepare(tmp_path / "k", imagenet, tmp_path / "shards", ranks, fault)
    assert killed.returncode != 0
    assert not (read_index(tmp_path / "shards" / "train") or {}).get("complete")
    again = run_prepare(tmp_path / "r", imagenet, tmp_path / "shards", rerun_ranks)
    assert again.returncode == 0, again.stderr[-3000:]
    same_shards(tmp_path / "whole", tmp_path / "shards")


def test_unreadable_images_skipped_by_prepare_are_counted_in_the_index_and_the_last_line(imagenet, tmp_path, caplog):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(imagenet, raw)
    bad = sorted((raw / "train").rglob("*.JPEG"))[5]
    bad.write_bytes(b"not a jpeg")
    with caplog.at_level(logging.INFO):
        index = prepare(cfg_of(tmp_path, raw, tmp_path / "shards", "prepare.splits=[train]", "data.skip_bad=true"))["train"]
    assert index["complete"] and index["num_samples"] == 11 and index["skipped"] == 1
    assert [s["samples"] for s in index["shards"]] == [4, 3, 4]
    assert "train: 11 samples in 3 shards" in caplog.text and "1 unreadable item(s) skipped" in caplog.text


@pytest.mark.slow  # prepare.py on 2 ranks as processes
@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGUSR1", 138)])
def test_a_stop_signal_on_two_ranks_stops_at_a_shard_boundary_and_the_command_resumes(imagenet, tmp_path, sig, code):
    whole = run_prepare(tmp_path / "w", imagenet, tmp_path / "whole", 1)
    assert whole.returncode == 0, whole.stderr[-2000:]
    stopped = run_prepare(tmp_path / "k", imagenet, tmp_path / "shards", 2, f"between_shards@0:{sig}")
    assert stopped.returncode == code, stopped.stderr[-3000:]
    assert f"{sig}: prepare stopped at a shard boundary on rank 0" in stopped.stderr
    assert (tmp_path / "shards" / "train" / "shard-00000.json").is_file()  # rank 0's first shard, recorded
    again = run_prepare(tmp_path / "r", imagenet, tmp_path / "shards", 2)
    assert again.returncode == 0, again.stderr[-3000:]
    same_shards(tmp_path / "whole", tmp_path / "shards")
