"""The shared preprocessing contract: any mode to RGB, EXIF orientation, resize, clear errors."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from runtimes.preprocess import ImageDecodeError, load_image, preprocess


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_grey_palette_cmyk_become_rgb() -> None:
    grey = Image.new("L", (4, 4), 100)
    assert load_image(_png(grey)).getpixel((0, 0)) == (100, 100, 100)
    pal = Image.new("RGB", (4, 4), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert load_image(_png(pal)).getpixel((1, 1)) == (10, 200, 30)
    buf = io.BytesIO()
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(buf, format="JPEG")
    assert load_image(buf.getvalue()).mode == "RGB"
    assert np.asarray(load_image(buf.getvalue())).min() > 240  # CMYK zero ink is white


def test_transparent_pixels_composite_on_white() -> None:
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))
    out = load_image(_png(rgba))
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((1, 0)) == (255, 255, 255)
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([0, 0, 255, 9, 9, 9])
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 1
    out = load_image(_png(pal))
    assert out.getpixel((0, 0)) == (0, 0, 255) and out.getpixel((1, 0)) == (255, 255, 255)


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    data = np.array([[0, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(data)  # mode I;16
    out = np.asarray(load_image(_png(image)))[0, :, 0]
    assert out.tolist() == [0, 128, 255]


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif, quality=95)
    out = load_image(buf.getvalue())
    assert out.size == (20, 40)
    top, bottom = np.asarray(out)[2, 10].mean(), np.asarray(out)[37, 10].mean()
    assert top > 200 and bottom < 50  # the white left half is now on top


def test_preprocess_shape_dtype_range_and_sources(tmp_path) -> None:
    image = Image.new("RGB", (50, 30), (255, 128, 0))
    path = tmp_path / "x.png"
    image.save(path)
    arrays = [
        preprocess(path, (16, 8)),
        preprocess(str(path), (16, 8)),
        preprocess(path.read_bytes(), (16, 8)),
        preprocess(open(path, "rb"), (16, 8)),
        preprocess(image, (16, 8)),
        preprocess(np.asarray(image), (16, 8)),
    ]
    for arr in arrays:
        assert arr.shape == (8, 16, 3) and arr.dtype == np.float32
        np.testing.assert_array_equal(arr, arrays[0])
    assert arrays[0][0, 0].tolist() == [255.0, 128.0, 0.0]


@pytest.mark.parametrize(
    "data",
    [b"", b"this is text, not a picture", b"\xff\xd8\xff\xe0" + b"\x00" * 20],
    ids=["empty", "text", "jpeg-header-only"],
)
def test_garbage_raises_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        load_image(data)


def test_truncated_png_raises_decode_error() -> None:
    data = _png(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(ImageDecodeError):
        load_image(data[: len(data) // 2])


def test_runtimes_never_imports_tensorflow() -> None:
    code = "import sys, runtimes; runtimes.preprocess(b'', (1, 1)) if False else None; " \
           "bad = [m for m in ('tensorflow', 'tf_keras', 'keras', 'edgevision') if m in sys.modules]; " \
           "sys.exit(1 if bad else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_model_sized_rgb_array_takes_the_fast_path_with_the_same_values() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    via_pil = np.asarray(load_image(Image.fromarray(array)).resize((30, 20)), dtype=np.float32)
    for dtype in (np.float32, np.uint8):
        out = preprocess(array, (30, 20), dtype=dtype)
        assert out.dtype == dtype and out.shape == (20, 30, 3)
        np.testing.assert_array_equal(out, via_pil)
        assert not np.shares_memory(out, array)
    sliced = np.ascontiguousarray(np.concatenate([array, array], axis=1))[:, ::2]  # non-contiguous view
    via_image = preprocess(Image.fromarray(np.ascontiguousarray(sliced)), (30, 20))
    np.testing.assert_array_equal(preprocess(sliced, (30, 20)), via_image)
