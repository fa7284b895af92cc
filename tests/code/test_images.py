"""The shared decoder and preprocessing: every mode converted the same way, bad bytes refused clearly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from visionops.images import ImageDecodeError, decode_image
from visionops.preprocess import PreprocessSpec, load_and_preprocess, normalize, preprocess, to_uint8


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "I;16", "1", "LA"])
def test_every_mode_decodes_to_rgb_uint8(mode):
    base = Image.fromarray((np.arange(64 * 48) % 256).astype(np.uint8).reshape(48, 64), "L")
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(base).astype(np.uint16) * 257)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode in ("CMYK",) else "PNG")
    out = decode_image(_png(img, fmt))
    assert out.mode == "RGB" and out.size == (64, 48)
    gray = decode_image(_png(img, fmt), channels=1)
    assert gray.mode == "L"


def test_transparent_pixels_become_white_not_black():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    out = np.asarray(decode_image(_png(rgba)))
    assert (out == 255).all()


def test_16bit_keeps_relative_brightness():
    dark = Image.fromarray(np.full((8, 8), 1000, np.uint16))
    out = np.asarray(decode_image(_png(dark), channels=1))
    assert out.max() < 10, "a dark 16-bit image must stay dark, not be stretched to full range"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_is_honoured(fmt):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out = decode_image(_png(img, fmt, exif=exif.tobytes()))
    assert out.size == (20, 40)
    assert decode_image(_png(img, fmt)).size == (40, 20)  # no orientation: as stored


def test_xmp_orientation_is_honoured():
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    out = decode_image(_png(Image.new("RGB", (40, 20)), "JPEG", xmp=xmp))
    assert out.size == (20, 40)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "corrupt"),
        (np.random.default_rng(0).bytes(2000), "not a recognised image"),
        (b"hello, this is text", "not a recognised image"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
    ],
)
def test_bad_bytes_raise_a_clear_error(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data)


def test_truncated_jpeg_is_refused():
    data = _png(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG")
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_size_and_pixel_limits():
    data = _png(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageDecodeError, match="over the limit of 10 bytes"):
        decode_image(data, max_bytes=10)
    with pytest.raises(ImageDecodeError, match="pixels"):
        decode_image(data, max_pixels=100 * 99)


def test_preprocess_shape_dtype_and_normalisation():
    spec = PreprocessSpec(size=(32, 24), channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = preprocess(Image.new("RGB", (50, 70), (255, 0, 128)), spec)
    assert x.shape == (3, 32, 24) and x.dtype == np.float32
    assert np.allclose(x[0], 1.0) and np.allclose(x[1], -1.0)
    u8 = to_uint8(Image.new("L", (5, 5), 7), PreprocessSpec(size=(5, 5), channels=1, mean=(0.0,), std=(1.0,)))
    assert u8.shape == (5, 5, 1)
    assert np.allclose(normalize(u8, PreprocessSpec(size=(5, 5), channels=1, mean=(0.0,), std=(1.0,))), 7 / 255)


def test_spec_round_trip_and_validation():
    spec = PreprocessSpec(size=(16, 16), channels=1, mean=(0.1,), std=(0.2,), interpolation="bicubic")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="one per channel"):
        PreprocessSpec(size=(8, 8), channels=3, mean=(0.5,), std=(0.5,))


def test_load_and_preprocess_from_path(tmp_path):
    p = tmp_path / "x.webp"
    Image.new("RGB", (10, 10), (1, 2, 3)).save(p)
    assert load_and_preprocess(p, PreprocessSpec()).shape == (3, 32, 32)
