"""Encoded images to the model's uint8 batch, each refusal with its own status: 400 for
what is not a (whole) image, 413 for what is too large, 415 for a format not accepted.

Two phases, so that the cost is known before it is paid: ``plan_decode`` reads each image's
header only (format, declared size), and counts the pixels that decoding will really take;
``DecodePlan.decode`` decodes them (in the decode pool, never on the event loop). A JPEG is
decoded at a reduced size where the model's input is smaller (libjpeg scales by 1/2, 1/4 or
1/8 while decoding: PIL's ``draft``), so a 12-megapixel photo for a 32x32 model decodes at
1/8 of its side, for 1/64 of the pixels; the image is then fitted as before, from at least
the model's size. Images that must already be the model's size (fit ``reject``) are decoded
whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from image_finetune.data.images import (
    ImageTooLargeError,
    UnsupportedImageFormatError,
    check_header,
    decode_rgb,
    fit,
    open_image,
)
from image_finetune.serving.errors import Rejected
from image_finetune.serving.settings import ServeSettings

SCALABLE_FORMATS = frozenset({"JPEG", "MPO"})  # libjpeg decodes these at 1/2, 1/4, 1/8


@contextmanager
def refusals() -> Iterator[None]:
    """The image module's ValueErrors as the statuses a client can act on."""
    try:
        yield
    except ImageTooLargeError as exc:
        raise Rejected(413, str(exc)) from exc
    except UnsupportedImageFormatError as exc:
        raise Rejected(415, str(exc)) from exc
    except ValueError as exc:
        raise Rejected(400, str(exc)) from exc


@dataclass
class DecodePlan:
    """A request's images, headers read, none decoded; ``pixels`` is what decoding costs."""

    names: list[str]
    images: list[Image.Image]
    size: int
    how: str

    @property
    def pixels(self) -> int:
        return sum(image.width * image.height for image in self.images)

    def decode(self) -> np.ndarray:
        """The images as one uint8 batch [N,size,size,3]; Rejected at the first bad one."""
        batch = np.empty((len(self.images), self.size, self.size, 3), np.uint8)
        for index, (name, image) in enumerate(zip(self.names, self.images, strict=True)):
            with refusals(), image:
                batch[index] = fit(decode_rgb(image, name), name, self.size, self.how)
        return batch


def open_one(name: str, data: bytes, size: int, settings: ServeSettings, how: str) -> Image.Image:
    """One image, its header checked and (a JPEG, where it may be fitted) set to decode at
    the smallest scale that still gives ``size`` pixels on each side."""
    if not data:
        raise Rejected(400, f"{name}: empty body")
    if len(data) > settings.max_image_bytes:
        raise Rejected(
            413, f"{name}: {len(data)} bytes, over the limit of {settings.max_image_bytes}"
        )
    with refusals():
        image = open_image(data, name)
        check_header(image, name, settings.max_pixels)
    if how != "reject" and image.format in SCALABLE_FORMATS:
        image.draft(None, (size, size))
    return image


def plan_decode(
    files: list[tuple[str, bytes]], size: int, settings: ServeSettings, how: str
) -> DecodePlan:
    """The request's images, opened and counted; 413 where their pixels together pass the
    request's budget (nothing decoded)."""
    if not files:
        raise Rejected(400, "no image in the request")
    if len(files) > settings.max_images:
        raise Rejected(413, f"too many images: at most {settings.max_images} per request")
    plan = DecodePlan(
        [name for name, _ in files],
        [open_one(name, data, size, settings, how) for name, data in files],
        size,
        how,
    )
    if plan.pixels > settings.max_request_pixels:
        raise Rejected(
            413,
            f"the request's images decode to {plan.pixels} pixels, over the "
            f"per-request budget of {settings.max_request_pixels} (send "
            "fewer or smaller images, or JPEGs)",
        )
    return plan


def decode_all(
    files: list[tuple[str, bytes]], size: int, settings: ServeSettings, how: str
) -> np.ndarray:
    """The request's images as one uint8 batch, planned and decoded at once (no budget)."""
    return plan_decode(files, size, settings, how).decode()
