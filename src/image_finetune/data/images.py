"""Decoding one encoded image, as users send them, to the uint8 RGB array the model takes.

Only PNG and JPEG are accepted. The declared dimensions are checked against a pixel budget
before any pixel is decoded (``Image.open`` reads the header only), so a small file that
declares a huge image costs nothing. EXIF orientation is applied; palette, grayscale, CMYK,
16-bit and transparent images become the RGB image a viewer would show. Every refusal is
a ``ValueError`` naming the file and the reason; the subclasses below let a server answer
each kind with its own status.
"""

from __future__ import annotations

import io
import struct
from typing import cast

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# MPO is how cameras and phones store JPEGs with extra frames; the first frame is the photo.
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "MPO"})
# PIL's own bomb threshold (~89.5 megapixels): what ingest always accepted. PIL types it
# int | None (None: a user turned the check off); its default, read here, is an int.
DEFAULT_MAX_PIXELS = cast(int, Image.MAX_IMAGE_PIXELS)
# Transparent pixels are shown on white, as image viewers and browsers show them.
BACKGROUND = (255, 255, 255)
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
# What PIL's plugins raise on malformed or truncated input besides OSError (fuzzing finds
# each of them); none of them may escape as anything but "corrupt".
MALFORMED = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


# How an image of another size becomes [S,S,3]: refused; stretched to S x S; or scaled so its
# shorter side is S and its centre cut out (aspect ratio kept, the borders lost).
FIT_MODES = ("reject", "resize", "center_crop")


class UnsupportedImageFormatError(ValueError):
    """An image in a format other than PNG or JPEG."""


class ImageTooLargeError(ValueError):
    """An image whose declared dimensions exceed the pixel budget."""


def decode_image(
    data: bytes,
    name: str,
    image_size: int,
    how: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode PNG/JPEG bytes to uint8 RGB [S,S,3], fitted ``how`` (one of FIT_MODES); raise
    ValueError with the reason."""
    with open_image(data, name) as image:
        check_header(image, name, max_pixels)
        rgb = decode_rgb(image, name)
    return fit(rgb, name, image_size, how)


def open_image(data: bytes, name: str) -> Image.Image:
    """The image behind ``data``, its header read and no pixel decoded."""
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ValueError(f"{name}: not an image file") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's own guard (its warning is an exception where warnings are errors).
        raise ImageTooLargeError(f"{name}: decompression bomb refused ({exc})") from exc
    except MALFORMED as exc:
        raise ValueError(f"{name}: corrupt or truncated image ({exc})") from exc


def check_header(image: Image.Image, name: str, max_pixels: int) -> None:
    """Refuse, before decoding, a format other than PNG/JPEG or a size over the budget."""
    if image.format not in ACCEPTED_FORMATS:
        raise UnsupportedImageFormatError(
            f"{name}: {image.format} images are not accepted (send PNG or JPEG)"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: declares {width}x{height} = {width * height} pixels, over the budget "
            f"of {max_pixels}"
        )


def decode_rgb(image: Image.Image, name: str) -> Image.Image:
    """Decode the pixels, upright (EXIF orientation) and as RGB."""
    try:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
    except MALFORMED as exc:
        raise ValueError(f"{name}: corrupt or truncated image ({exc})") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """The RGB image a viewer shows: transparency over white, 16-bit scaled to 8 bits."""
    if image.mode in SIXTEEN_BIT_MODES:
        image = Image.fromarray(scale_16_to_8_bits(np.asarray(image)))
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def scale_16_to_8_bits(values: np.ndarray) -> np.ndarray:
    """16-bit samples to 8 bits, rounded: 65535 -> 255, 257 * v -> v (PIL would clip)."""
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide + 128) // 257).astype(np.uint8)


def fit(rgb: Image.Image, name: str, image_size: int, how: str) -> np.ndarray:
    """The image at [S,S,3]: fitted ``how`` (bicubic), or refused when ``how`` is reject."""
    if how not in FIT_MODES:
        raise ValueError(f"unknown fit {how!r}: expected one of {', '.join(FIT_MODES)}")
    if rgb.size != (image_size, image_size):
        if how == "reject":
            width, height = rgb.size
            raise ValueError(
                f"{name}: size {height}x{width}, expected {image_size}x{image_size} "
                "(set data.on_wrong_size: resize or center_crop to accept it)"
            )
        if how == "center_crop":  # cut first: no border pixel may bleed in through the filter
            rgb = rgb.crop(center_square(*rgb.size))
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square of a width x height image, as PIL's crop box."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)
