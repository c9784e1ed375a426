"""What decoding a request costs is known before it is paid: each image's header is read,
its decoded pixels counted (a JPEG at the reduced size libjpeg decodes it at for the model),
a request over its budget refused before any pixel is decoded, and all requests together held
to the server's decode budget, where a small request fits beside a large one."""

from __future__ import annotations

import asyncio
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from image_finetune.data.images import decode_image
from image_finetune.serving.budget import DecodeBudget
from image_finetune.serving.decode import plan_decode
from image_finetune.serving.errors import Rejected
from image_finetune.serving.settings import ServeSettings

SETTINGS = ServeSettings(max_image_bytes=8 << 20, max_body_bytes=16 << 20)


def encoded(pixels: np.ndarray, kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A smooth 1200x1600 'photo' (gradients), as a camera's JPEG mostly is."""
    y, x = np.mgrid[0:1200, 0:1600]
    return np.dstack([x * 255 // 1600, y * 255 // 1200, (x + y) * 255 // 2800]).astype(np.uint8)


def test_a_jpeg_decodes_at_the_smallest_scale_that_still_covers_the_model(photo):
    data = encoded(photo, "JPEG")
    plan = plan_decode([("photo.jpg", data)], 32, SETTINGS, "resize")
    assert plan.pixels == (1600 // 8) * (1200 // 8)  # 1/8 of each side, 1/64 of the pixels
    reduced = plan.decode()[0].astype(int)
    whole = decode_image(data, "photo.jpg", 32, "resize").astype(int)
    assert np.abs(reduced - whole).mean() < 2.0  # what the model sees hardly changes


def test_images_that_must_be_the_models_size_are_decoded_whole(photo):
    plan = plan_decode([("photo.jpg", encoded(photo, "JPEG"))], 32, SETTINGS, "reject")
    assert plan.pixels == 1600 * 1200
    with pytest.raises(Rejected, match="expected 32x32"):
        plan.decode()


def test_a_request_over_its_pixel_budget_is_refused_before_decoding():
    solid = encoded(np.full((2048, 2048, 3), 90, np.uint8), "PNG")  # 4 Mpx in a few KiB
    truncated = solid[: len(solid) // 2]  # decoding it would fail: refused first, or not
    settings = ServeSettings(
        max_pixels=2048 * 2048,
        max_request_pixels=3 * 2048 * 2048,
        max_decode_pixels=3 * 2048 * 2048,
    )
    assert plan_decode([("a.png", solid)] * 3, 32, settings, "resize").pixels == 3 * 2048**2
    with pytest.raises(Rejected, match="over the per-request budget") as refused:
        plan_decode([("a.png", truncated)] * 64, 32, settings, "resize")
    assert refused.value.status == 413
    with pytest.raises(Rejected, match="corrupt or truncated"):  # within it: decoded
        plan_decode([("a.png", truncated)], 32, settings, "resize").decode()


def test_the_settings_keep_the_budgets_in_order():
    with pytest.raises(ValueError, match="max_request_pixels .* is over max_decode_pixels"):
        ServeSettings(max_request_pixels=10**8, max_decode_pixels=10**7)
    with pytest.raises(ValueError, match="max_pixels .* is over max_request_pixels"):
        ServeSettings(max_pixels=10**8, max_request_pixels=10**7, max_decode_pixels=10**8)


def run_budget(scenario):
    with ThreadPoolExecutor(2) as pool:
        return asyncio.run(scenario(pool))


def test_a_small_request_fits_beside_a_large_one_and_the_rest_wait_then_get_503():
    release = threading.Event()

    async def scenario(pool):
        budget = DecodeBudget(capacity=100, wait=0.3)
        large = asyncio.create_task(budget.run(90, pool, release.wait))
        await asyncio.sleep(0.05)
        small = await budget.run(10, pool, lambda: "small done")  # fits beside: no wait
        with pytest.raises(Rejected) as busy:  # does not fit: waits, then 503
            await budget.run(20, pool, lambda: "never")
        release.set()
        await large
        after = await budget.run(100, pool, lambda: "all of it")
        return small, busy.value, after, budget.used

    small, busy, after, used = run_budget(scenario)
    assert (small, busy.status, after, used) == ("small done", 503, "all of it", 0)
    assert busy.headers == {"Retry-After": "1"}


def test_pixels_stay_counted_until_the_decoder_finishes_even_if_the_client_leaves():
    release = threading.Event()

    async def scenario(pool):
        budget = DecodeBudget(capacity=100, wait=5)
        abandoned = asyncio.create_task(budget.run(100, pool, release.wait))
        await asyncio.sleep(0.05)
        abandoned.cancel()
        await asyncio.sleep(0.05)
        held = budget.used  # the thread still decodes: the pixels are still in use
        release.set()
        await budget.run(100, pool, lambda: None)  # once it has finished, they are free
        return held

    assert run_budget(scenario) == 100


def test_a_request_larger_than_the_whole_budget_is_refused_at_once():
    async def scenario(pool):
        with pytest.raises(Rejected) as refused:
            await DecodeBudget(capacity=10, wait=5).run(11, pool, lambda: None)
        return refused.value.status

    assert run_budget(scenario) == 413
