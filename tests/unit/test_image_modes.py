"""Every Pillow mode a folder of images can hold becomes the right 8-bit RGB pixels, or one line."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from elt.data.raw.base import decode_image, to_rgb
from elt.data.raw.images import ImageFolderRaw

R = 8  # the images are R x R, so the ADM crop leaves every pixel as it is


def palette_image(mode: str) -> Image.Image:
    im = Image.new(mode, (R, R), (3, 200) if mode == "PA" else 3)
    im.putpalette([0, 0, 0] * 3 + [200, 40, 10] + [0, 0, 0] * 252)
    return im


# mode -> (the image, its file format, the RGB every pixel must read as)
CASES = {
    "1": (lambda: Image.new("1", (R, R), 1), "png", (255, 255, 255)),
    "L": (lambda: Image.new("L", (R, R), 77), "png", (77, 77, 77)),
    "LA": (lambda: Image.new("LA", (R, R), (77, 10)), "png", (77, 77, 77)),  # alpha dropped, as ADM does
    "P": (lambda: palette_image("P"), "png", (200, 40, 10)),
    "PA": (lambda: palette_image("PA"), "tiff", (200, 40, 10)),
    "RGB": (lambda: Image.new("RGB", (R, R), (10, 120, 250)), "png", (10, 120, 250)),
    "RGBA": (lambda: Image.new("RGBA", (R, R), (10, 120, 250, 0)), "png", (10, 120, 250)),
    "CMYK": (lambda: Image.new("CMYK", (R, R), (255, 0, 0, 0)), "tiff", (0, 255, 255)),
    "I;16": (lambda: Image.fromarray(np.full((R, R), 32896, np.uint16)), "png", (128, 128, 128)),  # not white
    "I": (lambda: Image.fromarray(np.full((R, R), 65535, np.int32), "I"), "tiff", (255, 255, 255)),
    "F": (lambda: Image.fromarray(np.full((R, R), 0.5, np.float32), "F"), "tiff", (128, 128, 128)),
    "YCbCr": (lambda: Image.new("YCbCr", (R, R), (90, 128, 128)), "tiff", (90, 90, 90)),
}


@pytest.mark.parametrize("mode", sorted(CASES))
def test_every_mode_reads_as_8_bit_rgb(mode, tmp_path):
    make, fmt, rgb = CASES[mode]
    path = tmp_path / f"{mode.replace(';', '_')}.{fmt}"
    make().save(path)
    with Image.open(path) as im:
        assert im.mode == mode  # the file really holds that mode
    x = decode_image(str(path), R)
    assert x.shape == (3, R, R)
    assert (x * 255).round().to(int).flatten(1).T.unique(dim=0).tolist() == [list(rgb)]


def test_a_16_bit_png_keeps_its_gradient(tmp_path):
    ramp = np.linspace(0, 65535, R * R).astype(np.uint16).reshape(R, R)
    Image.fromarray(ramp).save(path := tmp_path / "ramp.png")
    x = decode_image(str(path), R)[0].numpy()
    assert np.array_equal(np.rint(x * 255), np.rint(ramp / 257.0))


@pytest.mark.parametrize("image, fragment", [
    (Image.fromarray(np.full((R, R), 2.0, np.float32), "F"), "mode F (32-bit float) holds values in [2, 2]"),
    (Image.fromarray(np.full((R, R), -5, np.int32), "I"), "mode I holds values in [-5, -5]"),
])
def test_values_outside_the_mode_range_are_refused(image, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        to_rgb(image)


def test_a_refused_image_in_a_folder_is_one_line_naming_the_file(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (R, R)).save(tmp_path / cls / "ok.png")
    Image.fromarray(np.full((R, R), 7.0, np.float32), "F").save(bad := tmp_path / "b" / "float.png", format="TIFF")
    ds = ImageFolderRaw(tmp_path, resolution=R)
    i = ds.keys.index(next(k for k in ds.keys if "float" in k))
    with pytest.raises(ValueError) as err:
        ds[i]
    line = str(err.value)
    assert str(bad) in line and "mode F" in line and "\n" not in line
