"""Evaluation of videos: the moving_digits 3D-CNN judge and its FVD, animated grids (GIF, MP4)."""
import logging
import os
import stat
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from elt.data.moving_digits import MovingDigitsDataModule
from elt.evaluation import judges, plots
from elt.evaluation.extractors import JudgeExtractor
from elt.evaluation.plots import grid_array, save_animation
from elt.evaluation.scoring import Scorer, reference_statistics
from support.config import compose_cfg

CPU = torch.device("cpu")
SHUFFLED = [0, 2, 1, 3]  # frames out of order: every frame real, the motion not


def fvd(extractor, reference, videos, labels=None) -> dict:
    scorer = Scorer([extractor], CPU)
    scorer.add(videos, labels)
    return scorer.metrics({extractor.name: reference}, is_splits=1, pr_k=None)


# ---- the judge ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    dm = MovingDigitsDataModule(cache_dir=str(tmp_path_factory.mktemp("moving_digits")))
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def judge(datamodule, tmp_path_factory):
    """The real recipe trained once, cached in tmp (~10-25 s on one busy core)."""
    cache = tmp_path_factory.mktemp("video_judge")
    net, info = judges.load_or_train_judge("moving_digits", datamodule, {"_target_": "moving_digits"}, cache)
    return net, info, cache


@pytest.mark.slow  # its judge fixture trains the real video recipe
def test_video_judge_reaches_the_bar_and_learns_motion(judge, datamodule, monkeypatch):
    net, info, cache = judge
    assert info["name"] == "moving_digits_cnn" and info["val_items"] == len(datamodule.val_dataset) == 300
    assert info["val_accuracy"] >= judges.JUDGES["moving_digits"].min_val_accuracy == 0.9
    # motion (the first move, always visible): chance is 1/8
    assert info["aux_target"] == "motion" and info["val_aux_accuracy"] >= 0.9
    assert (cache / "judges" / "moving_digits_cnn.pt").is_file()
    with monkeypatch.context() as m:  # a second call reads the cache: same judge, no training
        m.setattr(judges, "train_judge_pinned", lambda *a, **k: pytest.fail("retrained despite a valid cache"))
        again, cached_info = judges.load_or_train_judge("moving_digits", datamodule, {"_target_": "moving_digits"}, cache)
    assert cached_info == info
    x = datamodule.val_dataset.videos[:8]
    torch.testing.assert_close(again.features(x)[0], net.features(x)[0])


@pytest.mark.slow  # its judge fixture trains the real video recipe
def test_judge_fvd_is_zero_on_the_reference_set_and_sees_broken_motion(judge, datamodule, tmp_path):
    net, info, _ = judge
    extractor = JudgeExtractor(net, info, "video")
    assert (extractor.fd_metric, extractor.is_metric, extractor.acc_metric) == (
        "fvd_moving_digits_cnn", "is_moving_digits_cnn", "acc_moving_digits_cnn")
    val = datamodule.val_dataset
    ref = reference_statistics(extractor, val, "moving_digits_val", {}, tmp_path, 128, CPU)
    same = fvd(extractor, ref, val.videos, val.labels)
    assert set(same) == {"fvd_moving_digits_cnn", "is_moving_digits_cnn", "is_moving_digits_cnn_std", "acc_moving_digits_cnn"}
    assert abs(same["fvd_moving_digits_cnn"]) < 1e-6 and same["acc_moving_digits_cnn"] >= 0.9

    train_ref = reference_statistics(extractor, datamodule.train_dataset, "moving_digits_train", {}, tmp_path, 512, CPU)
    real = fvd(extractor, train_ref, val.videos)["fvd_moving_digits_cnn"]  # the floor: real but other videos
    shuffled = fvd(extractor, train_ref, val.videos[:, :, SHUFFLED])["fvd_moving_digits_cnn"]
    frozen = fvd(extractor, train_ref, val.videos[:, :, :1].expand_as(val.videos))["fvd_moving_digits_cnn"]
    # measured 9.2 / 30 / 436: the motion head makes still and jumpy videos stand out
    assert shuffled > 2 * real and frozen > 20 * real, (real, shuffled, frozen)


def test_fvd_with_a_random_3d_net_through_the_reference_path(datamodule, tmp_path):
    """Even untrained, 3-D kernels tell real motion from shuffled or frozen frames (measured: 1.8x
    and 3.7x the distance between two real sets); and a set is at distance 0 from itself."""
    torch.manual_seed(0)
    extractor = JudgeExtractor(judges.MovingDigitsCNN3D(10).eval(), {"name": "random3d", "key": "random3d-seed0"}, "video")
    val = datamodule.val_dataset
    ref = reference_statistics(extractor, val, "moving_digits_val", {}, tmp_path, 300, CPU)
    assert abs(fvd(extractor, ref, val.videos)["fvd_random3d"]) < 1e-9
    floor = fvd(extractor, ref, datamodule.train_dataset.videos[:300])["fvd_random3d"]
    assert fvd(extractor, ref, val.videos[:, :, SHUFFLED])["fvd_random3d"] > 1.5 * floor > 0
    assert fvd(extractor, ref, val.videos[:, :, :1].expand_as(val.videos))["fvd_random3d"] > 3 * floor


def test_image_judge_recipe_and_cache_key_are_unchanged():
    """The key names every cached digits judge and reference statistic: a change must be deliberate."""
    digits = judges.JUDGES["digits"]
    assert digits.version == "digits_cnn-v2"  # v2: trained in a pinned process (judges.PINNED_ENV)
    assert (digits.epochs, digits.batch_size, digits.lr, digits.weight_decay) == (15, 64, 3e-3, 1e-4)
    assert digits.augment is judges.random_shift and digits.aux_target is None
    assert isinstance(digits.build(10), judges.DigitsCNN)
    module = compose_cfg("train", []).data.module
    assert judges.judge_key(digits, module, 10) == "b7cde3cc01148c1b"
    # where generated data is cached does not make it other data
    assert judges.data_key({"_target_": "d", "cache_dir": "/x", "batch_size": 4, "seed": 0}) == {"_target_": "d", "seed": 0}


# ---- animated grids -----------------------------------------------------------------------------
def moving_squares(n: int = 6, frames: int = 4, size: int = 12) -> torch.Tensor:
    """A bright square moving one pixel per frame, on 17 gray levels (a GIF palette holds them exactly)."""
    videos = torch.zeros(n, 1, frames, size, size)
    for i in range(n):
        for t in range(frames):
            videos[i, 0, t, 2 + t: 6 + t, i: i + 4] = (i + 1) / 16
    return videos


def read_gif(path) -> tuple[list[np.ndarray], list[int]]:
    frames, durations = [], []
    with Image.open(path) as im:
        for t in range(im.n_frames):
            im.seek(t)
            frames.append(np.asarray(im.convert("RGB")))
            durations.append(im.info["duration"])
    return frames, durations


def test_gif_grid_plays_every_cell_with_the_grid_layout(tmp_path):
    videos, labels = moving_squares(), torch.tensor([0, 1, 2, 0, 1, 2])
    written = save_animation(videos, labels, tmp_path / "grids" / "L1.gif", per_class=2, classes=[0, 2], fps=4)
    assert written[0] == tmp_path / "grids" / "L1.gif"
    frames, durations = read_gif(written[0])
    assert len(frames) == 4 and durations == [250] * 4
    scale = 6  # 12 px cells upscaled to >= 64 px
    assert frames[0].shape == (2 * (12 * scale + 2) + 2, 2 * (12 * scale + 2) + 2, 3)
    for t, got in enumerate(frames):  # frame t is grid_array's grid of every video's frame t, exactly
        np.testing.assert_array_equal(got, grid_array(videos[:, :, t], labels, 2, [0, 2]))
    assert all(not np.array_equal(frames[t], frames[t + 1]) for t in range(3))
    assert not list(tmp_path.glob("grids/.*"))  # no temporary files left behind


def test_mp4_is_skipped_with_one_info_line_without_ffmpeg(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(plots.shutil, "which", lambda name: None)
    plots.find_ffmpeg.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=plots.log.name):
            for key in ("L1", "L2"):
                assert save_animation(moving_squares(), torch.arange(6) % 3, tmp_path / f"{key}.gif", 2, [0, 1], 4) == [tmp_path / f"{key}.gif"]
    finally:
        plots.find_ffmpeg.cache_clear()
    assert [r.levelno for r in caplog.records if "ffmpeg" in r.getMessage()] == [logging.INFO]
    assert not list(tmp_path.glob("*.mp4")) and len(list(tmp_path.glob("*.gif"))) == 2


FAKE_FFMPEG = """#!{python}
import sys
args = sys.argv[1:]
w, h = map(int, args[args.index("-s") + 1].split("x"))
data = sys.stdin.buffer.read()
if {fail} or len(data) % (w * h * 3) or w % 2 or h % 2:
    sys.exit("cannot encode")
open(args[-1], "wb").write(b"%d frames of %dx%d" % (len(data) // (w * h * 3), w, h))
"""


@pytest.mark.parametrize("fail", [False, True])
def test_mp4_goes_through_ffmpeg_atomically_and_a_failure_is_only_logged(tmp_path, monkeypatch, caplog, fail):
    """A stand-in ffmpeg that checks what a real one needs: whole rgb24 frames, even sides (the
    13 px videos make a 203×69 grid, which the writer must pad)."""
    videos, labels = moving_squares(size=13), torch.arange(6) % 3
    h, w = grid_array(videos[:, :, 0], labels, 1, [0, 1, 2]).shape[:2]
    assert (h, w) == (203, 69)
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text(FAKE_FFMPEG.format(python=sys.executable, fail=fail))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    plots.find_ffmpeg.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=plots.log.name):
            written = save_animation(videos, labels, tmp_path / "L3.gif", 1, [0, 1, 2], 4)
    finally:
        plots.find_ffmpeg.cache_clear()
    if fail:
        assert written == [tmp_path / "L3.gif"] and not (tmp_path / "L3.mp4").exists()
        assert "cannot encode" in caplog.text
    else:
        assert written == [tmp_path / "L3.gif", tmp_path / "L3.mp4"]
        assert (tmp_path / "L3.mp4").read_bytes() == b"4 frames of 70x204"
    assert not list(tmp_path.glob(".L3*"))  # no temporary file left, success or not
