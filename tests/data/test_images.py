"""Decoding images as users send them (data/images.py): what ingest, batch prediction and
the server share. Valid 8-bit RGB images decode exactly as PIL decodes them; everything
else is either the RGB image a viewer shows or a ValueError naming the file and reason."""

from __future__ import annotations

import contextlib
import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from image_finetune.data.images import (
    ImageTooLargeError,
    UnsupportedImageFormatError,
    decode_image,
)

RED, BLUE = (255, 0, 0), (0, 0, 255)


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: for what PIL cannot write (16-bit RGB) or would not (a header
    declaring a size its data does not have)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def sample(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_8_bit_rgb_decodes_exactly_as_pil_does(format):
    data = encode(Image.fromarray(sample()), format)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    decoded = decode_image(data, "x", 32, "reject")
    assert decoded.dtype == np.uint8 and decoded.shape == (32, 32, 3)
    np.testing.assert_array_equal(decoded, expected)


def test_other_sizes_are_resized_or_refused_by_name():
    data = encode(Image.fromarray(sample(size=40)), "PNG")
    assert decode_image(data, "x", 32, "resize").shape == (32, 32, 3)
    with pytest.raises(ValueError, match="x: size 40x40, expected 32x32"):
        decode_image(data, "x", 32, "reject")


def test_grayscale_and_palette_become_rgb():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    decoded = decode_image(encode(Image.fromarray(gray), "PNG"), "g", 8, "reject")
    assert (decoded == gray[..., None]).all()
    palette = Image.fromarray(sample(size=8)).quantize(16)
    expected = np.asarray(palette.convert("RGB"))
    decoded = decode_image(encode(palette, "PNG"), "p", 8, "reject")
    np.testing.assert_array_equal(decoded, expected)


def test_transparent_pixels_are_shown_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (*RED, 255)  # opaque red on the left, fully transparent black on the right
    decoded = decode_image(encode(Image.fromarray(rgba), "PNG"), "a", 8, "reject")
    assert (decoded[:, :4] == RED).all() and (decoded[:, 4:] == 255).all()
    gray_alpha = Image.fromarray(rgba[..., [0, 3]], mode="LA")
    decoded = decode_image(encode(gray_alpha, "PNG"), "la", 8, "reject")
    assert (decoded[:, 4:] == 255).all() and (decoded[:, :4] == 255).all()


def test_palette_transparency_is_shown_on_white():
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([*RED, *BLUE] + [0] * 762)
    palette.paste(1, (0, 0, 8, 4))  # top half: index 1 (blue), declared transparent
    data = encode(palette, "PNG", transparency=1)
    decoded = decode_image(data, "pt", 8, "reject")
    assert (decoded[:4] == 255).all() and (decoded[4:] == RED).all()


def test_16_bit_grayscale_is_scaled_not_saturated():
    values = np.array([[0, 257, 257 * 100, 32896, 65535, 65280, 1000, 60000]], np.uint16)
    image = Image.fromarray(np.repeat(values, 8, axis=0))
    assert image.mode == "I;16"
    decoded = decode_image(encode(image, "PNG"), "g16", 8, "reject")
    assert decoded[0, :, 0].tolist() == [0, 1, 100, 128, 255, 254, 4, 233]


def test_16_bit_rgb_keeps_its_colours():
    # Rows of a 2x2 16-bit RGB PNG: filter byte, then big-endian samples.
    pixel = struct.pack(">HHH", 65535, 32896, 0)
    data = raw_png(2, 2, 16, 2, (b"\0" + pixel * 2) * 2)
    decoded = decode_image(data, "rgb16", 2, "reject")
    assert decoded[0, 0].tolist() == [255, 128, 0]


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # no cyan, full magenta and yellow
    decoded = decode_image(encode(cmyk, "JPEG", quality=100), "cmyk", 8, "reject")
    assert np.abs(decoded.astype(int) - RED).max() <= 2


def test_exif_orientation_is_applied():
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:8], pixels[8:] = RED, BLUE  # red on top as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(Image.fromarray(pixels), "JPEG", quality=100, exif=exif.tobytes())
    decoded = decode_image(data, "exif", 16, "reject").astype(int)
    assert np.abs(decoded[:, 12:] - RED).max() <= 8  # red is on the right once upright
    assert np.abs(decoded[:, :4] - BLUE).max() <= 8


@pytest.mark.parametrize("format", ["GIF", "BMP", "TIFF", "WEBP"])
def test_other_formats_are_refused_by_name(format):
    data = encode(Image.fromarray(sample(size=8)), format)
    with pytest.raises(UnsupportedImageFormatError, match=f"f: {format} images are not accepted"):
        decode_image(data, "f", 8, "resize")


def test_declared_dimensions_are_refused_before_decoding():
    bomb = raw_png(8000, 8000, 8, 0, b"")  # 64 megapixels declared in 60 bytes
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="bomb: declares 8000x8000"):
        decode_image(bomb, "bomb", 32, "resize", max_pixels=4096 * 4096)
    assert time.perf_counter() - start < 0.5
    small = encode(Image.fromarray(sample(size=64)), "PNG")
    with pytest.raises(ImageTooLargeError, match="over the budget of 1000"):
        decode_image(small, "small", 32, "resize", max_pixels=1000)


def test_pil_bomb_guards_become_value_errors():
    huge = raw_png(20_000, 10_000, 8, 0, b"")  # over twice PIL's limit: its error
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        decode_image(huge, "huge", 32, "resize", max_pixels=10**12)
    large = raw_png(10_000, 10_000, 8, 0, b"")  # over PIL's limit: its warning, as an error
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLargeError, match="decompression bomb"):
            decode_image(large, "large", 32, "resize", max_pixels=10**12)


def test_broken_files_are_named():
    with pytest.raises(ValueError, match="t: not an image file"):
        decode_image(b"hello, not a picture", "t", 32, "resize")
    jpeg = encode(Image.fromarray(sample()), "JPEG")
    with pytest.raises(ValueError, match="cut: corrupt or truncated image"):
        decode_image(jpeg[: len(jpeg) // 3], "cut", 32, "resize")
    with pytest.raises(ValueError, match="empty: not an image file"):
        decode_image(b"", "empty", 32, "resize")


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_damaged_files_raise_value_errors_only(format):
    """Bytes flipped and files cut at random: a decoded image or a ValueError, nothing
    else (a server turns anything else into a 500)."""
    data = bytearray(encode(Image.fromarray(sample(size=24)), format))
    rng = np.random.default_rng(1)
    for _ in range(300):
        damaged = bytearray(data)
        for position in rng.integers(0, len(damaged), rng.integers(1, 6)):
            damaged[position] = rng.integers(0, 256)
        damaged = damaged[: rng.integers(8, len(damaged) + 1)]
        with contextlib.suppress(ValueError):
            decode_image(bytes(damaged), "d", 24, "resize", max_pixels=10**6)


def banded(width: int, height: int, band: int) -> Image.Image:
    """A width x height image, blue, with red bands ``band`` pixels wide left and right."""
    pixels = np.full((height, width, 3), BLUE, np.uint8)
    pixels[:, :band] = pixels[:, width - band :] = RED
    return Image.fromarray(pixels)


def all_blue(decoded: np.ndarray) -> bool:
    pixels = decoded.astype(int)
    return bool((pixels[..., 0] <= 2).all() and (pixels[..., 2] >= 253).all())


def test_a_centre_crop_keeps_the_aspect_ratio_and_drops_the_borders():
    wide = banded(72, 48, band=12)  # its centre 48x48 is all blue
    cropped = decode_image(encode(wide, "PNG"), "wide", 24, "center_crop")
    assert cropped.shape == (24, 24, 3) and all_blue(cropped)
    stretched = decode_image(encode(wide, "PNG"), "wide", 24, "resize")
    assert (stretched[:, 0, 0] == 255).all()  # the red bands squeezed in, not cut off
    tall = wide.transpose(Image.Transpose.ROTATE_90)  # 48x72, the bands at top and bottom
    assert all_blue(decode_image(encode(tall, "PNG"), "tall", 24, "center_crop"))


def test_a_square_image_of_the_right_size_is_left_alone_in_every_mode():
    image = sample(size=16)
    for how in ("reject", "resize", "center_crop"):
        decoded = decode_image(encode(Image.fromarray(image), "PNG"), "s", 16, how)
        np.testing.assert_array_equal(decoded, image)


def test_an_unknown_fit_is_refused():
    with pytest.raises(ValueError, match="unknown fit 'squash'"):
        decode_image(encode(Image.fromarray(sample()), "PNG"), "x", 32, "squash")
