"""Drift monitoring inside a real server process over HTTP: the champion is registered with
its reference profile (computed from its validation images), windows of 50 real CIFAR-10
test images raise no alarm, and windows of the same images corrupted by the test (heavy
Gaussian noise at low contrast) do, in ``GET /monitoring`` and in the metrics; the windows'
summaries are recorded as .npz in the format the ``monitor`` step reads."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from image_finetune.data.images import decode_image
from image_finetune.monitoring.profile import ReferenceProfile
from image_finetune.steps.monitor import read_recorded
from tests.e2e.serving_support import png, register_with_profile, serve
from tests.support import wait_until

pytestmark = pytest.mark.ordered
WINDOW = 50


@pytest.fixture(scope="module")
def monitored(champion, tmp_path_factory):
    """The champion with its reference profile in a registry of this module's own, served
    with 50-image windows whose summaries are recorded."""
    work = tmp_path_factory.mktemp("drift")
    params, profile, outcome = register_with_profile(champion, work, "drift-1")
    assert outcome["promoted"]
    records = work / "windows"
    server = serve(
        {
            "MLFLOW_TRACKING_URI": params.registry.tracking_uri,
            "IMAGE_FINETUNE_MODEL_NAME": params.registry.model_name,
            "IMAGE_FINETUNE_MONITOR_WINDOW": str(WINDOW),
            # every window tested, none rested over (the rest: a unit test's)
            "IMAGE_FINETUNE_MONITOR_CPU_SHARE": "1",
            "IMAGE_FINETUNE_MONITOR_RECORD_DIR": str(records),
        },
        [],
        work,
    )
    yield {
        "server": server,
        "records": records,
        "profile": profile,
        "files": sorted((champion["folder"] / "test").glob("*/*.jpg")),
    }
    server.stop()


def corrupted(jpeg: bytes) -> bytes:
    """The image at a third of its contrast under Gaussian noise (sigma 0.25), as a PNG."""
    pixels = decode_image(jpeg, "test.jpg", 32, "resize").astype(np.float32) / 255
    rng = np.random.default_rng(len(jpeg))
    pixels = (pixels - pixels.mean()) / 3 + pixels.mean() + rng.normal(0, 0.25, pixels.shape)
    return png((np.clip(pixels, 0, 1) * 255).astype(np.uint8))


def send_window(url: str, images: list[bytes], kind: str) -> None:
    response = httpx.post(
        f"{url}/predict",
        timeout=120,
        files=[("files", (f"{i}.{kind}", data, f"image/{kind}")) for i, data in enumerate(images)],
    )
    assert response.status_code == 200, response.text


def window_result(url: str, count: int) -> dict:
    """``GET /monitoring`` once ``count`` windows have been tested."""
    wait_until(
        lambda: httpx.get(f"{url}/monitoring").json()["windows_tested"] >= count,
        timeout=120,
        what=f"window {count} was never tested",
    )
    return httpx.get(f"{url}/monitoring").json()


def test_clean_windows_raise_no_alarm_and_corrupted_ones_do(monitored):
    url, files = monitored["server"].url, monitored["files"]
    state = httpx.get(f"{url}/monitoring").json()
    assert state["enabled"] and state["reference_profile"] and state["window_size"] == WINDOW
    for window in range(2):  # real test images: the reference's distribution
        send_window(url, [f.read_bytes() for f in files[window::4][:WINDOW]], "jpeg")
        state = window_result(url, window + 1)
        assert state["drift"] is False, state["tests"]
        assert state["model_version"] == "1" and state["last_window"]["window_size"] == WINDOW
    for window in range(2, 4):
        send_window(url, [corrupted(f.read_bytes()) for f in files[window::4][:WINDOW]], "png")
        state = window_result(url, window + 1)
        assert state["drift"] is True
    assert state["tests"]["sharpness"]["drift"] and state["tests"]["contrast"]["drift"]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'image_finetune_drift_detected{model_version="1",test="overall"} 1.0' in metrics
    assert 'image_finetune_monitor_windows_total{model_version="1"} 4.0' in metrics
    assert f'image_finetune_monitor_images_total{{model_version="1"}} {4 * WINDOW}.0' in metrics


def test_the_recorded_windows_are_what_the_monitor_step_reads(monitored):
    recorded = sorted(monitored["records"].glob("*.npz"))
    assert len(recorded) == 4
    observed = read_recorded(recorded[0], ReferenceProfile.load(monitored["profile"]))
    assert len(observed.window) == WINDOW and observed.window.probabilities.shape[1] == 10
