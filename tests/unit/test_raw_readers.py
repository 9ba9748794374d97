"""Raw-layout readers (elt.data.raw) on miniatures in the real layouts: ImageNet's quirks and two
val layouts, the ADM crop, flips, labels without decoding, class folders, UCF-101 splits/clips."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from elt.data.raw.base import adm_center_crop
from elt.data.raw.images import ImageFolderRaw, ImageNetRaw
from elt.data.raw.ucf101 import UCF101Raw
from support.miniature import (class_color, imagenet_wnids, make_image_folder, make_imagenet, make_ucf101, nearest_class,
                               square_center, ucf_class_ind, ucf_video_name)


def check_image(item, resolution):
    x = item["image"]
    assert x.dtype == torch.float32 and x.shape == (3, resolution, resolution)
    assert 0 <= x.min() and x.max() <= 1
    assert isinstance(item["label"], int) and isinstance(item["key"], str)


# ------------------------------------------------------------------------------------ ImageNet

def test_imagenet_quirks_load_and_classes_follow_sorted_wnids(tmp_path):
    """CMYK, grayscale and PNG-named-.JPEG files decode by content; index = sorted wnid position."""
    make_imagenet(tmp_path, wnids=3, per_class=2, quirks=True)
    ds = ImageNetRaw(tmp_path, "train", resolution=16)
    assert ds.classes == imagenet_wnids(3) and len(ds) == 3 * 2 + 3
    for i in range(len(ds)):
        item = ds[i]
        check_image(item, 16)
        assert ds.classes[item["label"]] == item["key"].split("_")[0] == item["key"][:9]
        assert item["label"] == ds.labels[i] and item["key"] == ds.keys[i]
        if item["key"].endswith("_gray"):
            assert torch.equal(item["image"][0], item["image"][1])  # gray -> RGB replicates the channel
        else:  # the class's colour survives (CMYK included): content and label agree
            assert nearest_class(item["image"], 3) == item["label"]
            assert np.allclose(item["image"].mean((1, 2)) * 255, class_color(item["label"]), atol=12)


def test_corrupt_file_raises_with_path_or_is_skipped_and_counted(tmp_path, caplog):
    make_imagenet(tmp_path, wnids=2, per_class=2, corrupt=True)
    ds = ImageNetRaw(tmp_path, resolution=8)
    bad = ds.keys.index(f"{ds.classes[-1]}_corrupt")
    with pytest.raises(ValueError, match=f"{ds.classes[-1]}_corrupt.JPEG"):
        ds[bad]
    with pytest.raises(ValueError, match="_corrupt.JPEG"):
        list(ds.iter_items())
    skipping = ImageNetRaw(tmp_path, resolution=8, flip="both", skip_bad=True)
    with pytest.raises(ValueError, match="_corrupt.JPEG"):  # random access still names the file
        skipping[2 * bad]
    with caplog.at_level(logging.WARNING, logger="elt.data.raw"):
        items = list(skipping.iter_items())
    assert skipping.skipped == 1 and len(items) == 2 * (len(ds) - 1)
    assert [it["key"] for it in items] == [k for k in skipping.keys if "_corrupt" not in k]
    assert "skipped 1 unreadable file(s) of 5" in caplog.text


def test_flat_val_layout_gives_the_folder_layout_labels(tmp_path):
    folders = ImageNetRaw(make_imagenet(tmp_path / "folders", wnids=3, val_per_class=2), "val", resolution=8)
    flat = ImageNetRaw(make_imagenet(tmp_path / "flat", wnids=3, val_per_class=2, val_layout="flat"), "val",
                       resolution=8)
    assert flat.keys == folders.keys and flat.labels == folders.labels
    assert sorted(flat.labels) == [0, 0, 1, 1, 2, 2]
    assert [nearest_class(flat[i]["image"], 3) for i in range(len(flat))] == flat.labels

    kaggle = tmp_path / "kaggle"  # Kaggle: ILSVRC/Data/CLS-LOC/{train,val}, the csv at the top
    shutil.copytree(tmp_path / "flat", kaggle / "ILSVRC" / "Data" / "CLS-LOC")
    shutil.move(kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "LOC_val_solution.csv", kaggle)
    assert ImageNetRaw(kaggle, "val", resolution=8).labels == flat.labels

    csv = tmp_path / "flat" / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")  # one image loses its row
    with pytest.raises(ValueError, match="has no row in .*LOC_val_solution.csv"):
        ImageNetRaw(tmp_path / "flat", "val")
    csv.unlink()
    with pytest.raises(FileNotFoundError, match="LOC_val_solution.csv"):
        ImageNetRaw(tmp_path / "flat", "val")


def test_missing_raw_root_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'}.*ILSVRC-2012"):
        ImageNetRaw(tmp_path / "nope")


def exactly_the_middle_stripe(a) -> bool:
    """[H, W, 3] crop of red | green | blue thirds: green inside; bicubic bleed of red into the
    first column only and of blue into the last only, so the crop edges sit on the thirds."""
    r, g, b = (a[..., c] for c in range(3))
    return bool((g[:, 2:-2] == g.max()).all() and (r[:, 1:] == 0).all() and (b[:, :-1] == 0).all()
                and (r[:, 0] > 0).all() and (b[:, -1] > 0).all())


def test_adm_crop_is_a_centre_crop_of_the_short_side(tmp_path):
    """Three vertical stripes (landscape; transposed for portrait): exactly the middle one is kept."""
    stripes = np.zeros((100, 300, 3), np.uint8)
    stripes[:, :100, 0], stripes[:, 100:200, 1], stripes[:, 200:, 2] = 255, 255, 255
    out = adm_center_crop(Image.fromarray(stripes), 64)
    assert out.shape == (64, 64, 3) and exactly_the_middle_stripe(out)
    portrait = adm_center_crop(Image.fromarray(stripes.transpose(1, 0, 2).copy()), 64)
    assert exactly_the_middle_stripe(portrait.transpose(1, 0, 2))
    assert adm_center_crop(Image.new("RGB", (1100, 1030)), 512).shape == (512, 512, 3)
    (tmp_path / "c" / "x").mkdir(parents=True)
    Image.fromarray(stripes).save(tmp_path / "c" / "x" / "s.png")  # the reader applies the same crop
    x = ImageFolderRaw(tmp_path / "c", resolution=32)[0]["image"]
    assert x.shape == (3, 32, 32) and exactly_the_middle_stripe(x.permute(1, 2, 0).numpy())


def test_adm_crop_box_halves_before_bicubic():
    """A 256² image of 4x4 blocks at resolution 64: two BOX halvings give each block's colour
    exactly (then the bicubic step is the identity); a direct bicubic resize would blur blocks."""
    blocks = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = adm_center_crop(Image.fromarray(blocks.repeat(4, 0).repeat(4, 1)), 64)
    assert np.array_equal(out, blocks)


def test_flip_both_doubles_items_and_flips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / name / "n.png")
    plain, both = ImageFolderRaw(tmp_path, resolution=16), ImageFolderRaw(tmp_path, resolution=16, flip="both")
    assert len(both) == 2 * len(plain) == 4
    assert both.keys == ["a/n", "a/n_flip", "b/n", "b/n_flip"] and both.labels == [0, 0, 1, 1]
    for i in range(len(plain)):
        original, flipped = both[2 * i], both[2 * i + 1]
        assert torch.equal(original["image"], plain[i]["image"])
        assert torch.equal(flipped["image"], original["image"].flip(-1))
        assert not torch.equal(flipped["image"], original["image"])
    streamed = list(both.iter_items())
    assert [it["key"] for it in streamed] == both.keys
    assert all(torch.equal(it["image"], both[i]["image"]) for i, it in enumerate(streamed))
    assert [it["key"] for it in both.iter_items(num_workers=1)] == both.keys  # a worker process keeps the order
    with pytest.raises(ValueError, match="flip"):
        ImageFolderRaw(tmp_path, flip="horizontal")


def test_labels_and_keys_need_no_decoding(tmp_path, monkeypatch):
    make_imagenet(tmp_path / "in", wnids=2, per_class=2, val_layout="flat")
    make_image_folder(tmp_path / "if", classes=2, per_class=2)
    make_ucf101(tmp_path / "ucf", classes=2, groups=2, frames=4)

    def refuse(*args, **kwargs):
        raise AssertionError("decoded while listing")

    import av
    import PIL.Image
    monkeypatch.setattr(PIL.Image, "open", refuse)
    monkeypatch.setattr(av, "open", refuse)
    readers = [ImageNetRaw(tmp_path / "in", "train"), ImageNetRaw(tmp_path / "in", "val"),
               ImageFolderRaw(tmp_path / "if"), UCF101Raw(tmp_path / "ucf", "all")]
    assert [r.labels for r in readers] == [[0, 0, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert all(len(r.keys) == len(r) == 4 and len(r.classes) == 2 for r in readers)
    for r in readers:  # the patch is live: decoding goes through it, reported with the path
        with pytest.raises(ValueError, match="decoded while listing"):
            r[0]


# ------------------------------------------------------------------------------------ class folders

def test_image_folder_any_case_extensions_and_sorted_classes(tmp_path):
    make_image_folder(tmp_path, classes=["zebra", "Ant", "cat"], per_class=5)
    ds = ImageFolderRaw(tmp_path, resolution=8)
    assert ds.classes == ["Ant", "cat", "zebra"] and len(ds) == 15  # notes.txt ignored
    assert {k.rsplit("/", 1)[0] for k in ds.keys} == set(ds.classes)
    for i in range(0, 15, 4):
        check_image(ds[i], 8)
        assert nearest_class(ds[i]["image"], 3) == ds.labels[i]


def test_image_folder_split_folders_and_held_out_val(tmp_path):
    make_image_folder(tmp_path / "split", classes=2, per_class=3, splits=("train", "val"))
    (tmp_path / "split" / "train" / "class_c").mkdir()  # a class present only in train keeps indices aligned
    (tmp_path / "split" / "train" / "class_c" / "x.png").write_bytes((tmp_path / "split" / "train" / "class_a" /
                                                                       "img002.png").read_bytes())
    val = ImageFolderRaw(tmp_path / "split", "val", resolution=8)
    assert val.classes == ["class_a", "class_b", "class_c"] and val.labels == [0, 0, 0, 1, 1, 1]
    with pytest.raises(FileNotFoundError, match="test"):
        ImageFolderRaw(tmp_path / "split", "test")

    root = make_image_folder(tmp_path / "flat", classes=3, per_class=5)
    train, val = (ImageFolderRaw(root, s, val_per_class=2, split_seed=3) for s in ("train", "val"))
    assert len(train) == 9 and len(val) == 6 and sorted(val.labels) == [0, 0, 1, 1, 2, 2]
    assert set(train.keys).isdisjoint(val.keys) and set(train.keys) | set(val.keys) == set(ImageFolderRaw(root).keys)
    assert ImageFolderRaw(root, "val", val_per_class=2, split_seed=3).keys == val.keys  # deterministic
    assert {ImageFolderRaw(root, "val", val_per_class=2, split_seed=s).keys[0] for s in range(8)} != {val.keys[0]}
    with pytest.raises(ValueError, match="leave none"):
        ImageFolderRaw(root, "train", val_per_class=5)
    shutil.copy(root / "class_a" / "img000.jpg", root / "class_a" / "img000.png")
    with pytest.raises(ValueError, match="share the key 'class_a/img000'"):
        ImageFolderRaw(root)
    with pytest.raises(FileNotFoundError, match="val_per_class"):
        ImageFolderRaw(root, "val")


# ------------------------------------------------------------------------------------ UCF-101

def square_x(frame: torch.Tensor) -> float:
    """x centre of the bright square in one [3, H, W] frame."""
    return float(np.argwhere(frame.mean(0).numpy() > 0.5)[:, 1].mean())


def test_ucf101_splits_labels_and_class_ind_order(tmp_path):
    root = make_ucf101(tmp_path, classes=3, groups=3, clips=2, frames=4)
    every, train, test = (UCF101Raw(root, s, fold=1, frames=2) for s in ("all", "train", "test"))
    assert (len(every), len(train), len(test)) == (18, 12, 6)
    assert every.classes == ucf_class_ind(3) == ["HandstandPushups", "JumpingJack", "JumpRope"]
    assert set(train.keys) | set(test.keys) == set(every.keys) and set(train.keys).isdisjoint(test.keys)
    assert all("_g01_" in k for k in test.keys)
    assert set(UCF101Raw(root, "test", fold=2, frames=2).keys) == {k for k in every.keys if "_g02_" in k}
    label = dict(zip(every.keys, every.labels))
    assert label[ucf_video_name("JumpRope", 2, 1)] == 2 and label[ucf_video_name("JumpingJack", 1, 2)] == 1
    assert label["v_HandStandPushups_g03_c02"] == 0  # file spelling differs from the folder's
    for ds in (train, test):
        assert all(label[k] == y for k, y in zip(ds.keys, ds.labels))
    (root / "ucfTrainTestlist" / "trainlist03.txt").unlink()
    with pytest.raises(FileNotFoundError, match="trainlist03.txt"):
        UCF101Raw(root, "train", fold=3)


def test_ucf101_clip_shape_stride_and_placement(tmp_path):
    """Frame k of a clip shows the square drawn at frame start + k·stride (40x32 video at
    resolution 32: no resize, a 4-pixel centre crop on each side)."""
    root = make_ucf101(tmp_path, classes=1, groups=1, frames=20)
    start = UCF101Raw(root, frames=8, stride=2, resolution=32, clip="start")[0]["image"]
    center = UCF101Raw(root, frames=8, stride=2, resolution=32, clip="center")[0]["image"]
    assert start.shape == center.shape == (3, 8, 32, 32) and start.dtype == torch.float32
    for k in range(8):
        assert square_x(start[:, k]) == pytest.approx(square_center(2 * k, 20)[0] - 4, abs=0.5)
        assert square_x(center[:, k]) == pytest.approx(square_center(2 + 2 * k, 20)[0] - 4, abs=0.5)  # (20-15)//2
    small = UCF101Raw(root, frames=4, resolution=16)[0]["image"]
    assert small.shape == (3, 4, 16, 16) and 0 <= small.min() and small.max() <= 1


def test_ucf101_short_video_repeats_its_last_frame(tmp_path):
    root = make_ucf101(tmp_path, classes=1, groups=1, frames=10)
    ds = UCF101Raw(root, frames=4, stride=4, resolution=32, clip="center")  # span 13 > 10 frames
    x = ds[0]["image"]
    assert x.shape == (3, 4, 32, 32)
    drawn = [0, 4, 8, 9]  # frames 0, 4, 8, then 12 -> the last (9)
    for k, t in enumerate(drawn):
        assert square_x(x[:, k]) == pytest.approx(square_center(t, 10)[0] - 4, abs=0.5)
    assert torch.equal(x[:, 3], UCF101Raw(root, frames=10, resolution=32, clip="start")[0]["image"][:, 9])


def test_ucf101_all_clips_and_bad_video(tmp_path):
    root = make_ucf101(tmp_path, classes=2, groups=1, frames=20)
    ds = UCF101Raw(root, frames=8, resolution=32, clip="all")
    video = ucf_video_name("JumpRope", 1, 1)
    assert ds.keys.count(f"{video}_t0008") == 1 and len(ds) == 4  # clips at 0 and 8 fit; 16 would not
    second = ds[ds.keys.index(f"{video}_t0008")]
    assert second["label"] == 1 and square_x(second["image"][:, 0]) == pytest.approx(square_center(8, 20)[0] - 4,
                                                                                       abs=0.5)
    bad = root / "UCF-101" / "JumpRope" / "v_JumpRope_g02_c01.avi"
    bad.write_bytes(np.random.default_rng(0).bytes(3000))
    listed = UCF101Raw(root, frames=8, resolution=16, skip_bad=True)
    with pytest.raises(ValueError, match="v_JumpRope_g02_c01.avi"):
        listed[listed.keys.index(bad.stem)]
    assert len(list(listed.iter_items())) == 2 and listed.skipped == 1
