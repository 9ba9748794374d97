"""eval.save_samples: the .npz that ADM's evaluator reads (arr_0 uint8 [N, H, W, 3]), assembled from parts
that several ranks wrote, read back the way that evaluator streams it."""
import zipfile

import numpy as np
import pytest
import torch

from elt.evaluation.samples import SampleParts, to_uint8


def read_like_adm(path, batch: int):
    """ADM's evaluator streams arr_0 out of the zip member: magic, a 1.0 or 2.0 header, then raw C-order
    bytes read batch by batch (evaluations/evaluator.py, open_npz_array); the labels are read whole."""
    with zipfile.ZipFile(path) as zf, zf.open("arr_0.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, fortran, dtype = read_header(f)
        assert not fortran and dtype == np.uint8 and not dtype.hasobject
        out, left = [], shape[0]
        while left:
            n = min(batch, left)
            data = f.read(n * int(np.prod(shape[1:])))
            out.append(np.frombuffer(data, dtype=dtype).reshape(n, *shape[1:]))
            left -= n
        assert f.read() == b""
    with np.load(path) as z:
        return np.concatenate(out), z["labels"]


def test_parts_from_several_ranks_assemble_in_batch_order_into_adm_format(tmp_path):
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(n, 3, 8, 6, generator=g), torch.arange(n) + 10 * i) for i, n in enumerate([4, 4, 3])]
    parts = SampleParts(tmp_path / "samples", "L2")
    for i in (1, 2, 0):  # ranks finish in any order
        parts.write(i, *batches[i])
    path = parts.assemble(3)
    assert path == tmp_path / "samples" / "L2.npz" and not parts.parts.exists()
    images, labels = read_like_adm(path, batch=5)
    expected = np.concatenate([np.rint(x.numpy() * 255).astype(np.uint8).transpose(0, 2, 3, 1) for x, _ in batches])
    assert images.shape == (11, 8, 6, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, np.concatenate([y.numpy() for _, y in batches]))
    with np.load(path) as z:  # numpy's own reader agrees
        np.testing.assert_array_equal(z["arr_0"], expected)


def test_grey_images_become_rgb_and_videos_keep_their_frames():
    grey = torch.rand(2, 1, 4, 4)
    u8 = to_uint8(grey)
    assert u8.shape == (2, 4, 4, 3) and (u8[..., 0] == u8[..., 2]).all()
    video = torch.zeros(2, 3, 5, 4, 4)
    video[:, 0, 3] = 1.0  # frame 3 red
    v8 = to_uint8(video)
    assert v8.shape == (2, 5, 4, 4, 3) and (v8[:, 3, ..., 0] == 255).all() and v8[:, 2].max() == 0
    assert to_uint8(torch.tensor([[[[-0.2, 1.3, 0.5]]]])).ravel().tolist() == [0, 0, 0, 255, 255, 255, 128, 128, 128]
    with pytest.raises(ValueError, match="samples must be"):
        to_uint8(torch.zeros(2, 4, 4))


def test_a_missing_part_is_named(tmp_path):
    parts = SampleParts(tmp_path, "L1")
    parts.write(0, torch.rand(2, 3, 4, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(FileNotFoundError, match=r"sample parts missing \(0000001.npz\)"):
        parts.assemble(2)
    assert not (tmp_path / "L1.npz").exists()
