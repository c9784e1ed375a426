"""Encoded images to the model's uint8 batch, each refusal with its own status: 400 for
what is not a (whole) image, 413 for what is too large, 415 for a format not accepted.
Runs in the decode thread pool, never on the event loop."""

from __future__ import annotations

import numpy as np

from image_finetune.data.images import (
    ImageTooLargeError,
    UnsupportedImageFormatError,
    decode_image,
)
from image_finetune.serving.errors import Rejected
from image_finetune.serving.settings import ServeSettings


def decode_one(name: str, data: bytes, size: int, settings: ServeSettings,
               how: str) -> np.ndarray:
    """One image at [size,size,3], fitted ``how`` (as the model's training data was fitted)."""
    if not data:
        raise Rejected(400, f"{name}: empty body")
    if len(data) > settings.max_image_bytes:
        raise Rejected(413, f"{name}: {len(data)} bytes, over the limit of "
                            f"{settings.max_image_bytes}")
    try:
        return decode_image(data, name, size, how, max_pixels=settings.max_pixels)
    except ImageTooLargeError as exc:
        raise Rejected(413, str(exc)) from exc
    except UnsupportedImageFormatError as exc:
        raise Rejected(415, str(exc)) from exc
    except ValueError as exc:
        raise Rejected(400, str(exc)) from exc


def decode_all(files: list[tuple[str, bytes]], size: int, settings: ServeSettings,
               how: str) -> np.ndarray:
    """The request's images as one uint8 batch; Rejected at the first bad one."""
    if not files:
        raise Rejected(400, "no image in the request")
    if len(files) > settings.max_images:
        raise Rejected(413, f"too many images: at most {settings.max_images} per request")
    return np.stack([decode_one(name, data, size, settings, how) for name, data in files])
