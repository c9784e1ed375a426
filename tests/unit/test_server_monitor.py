"""The server's drift monitor below HTTP: answers are queued in O(1) and dropped (counted)
when the tester is behind, never waited for; full windows are tested on the monitor's own
thread against the served version's profile, into metrics and ``GET /monitoring``'s state;
a new version starts a new window; recorded windows stay bounded on disk; under load a
fixed share of the answers is sampled into the windows, the share a metric and the rest
counted."""

from __future__ import annotations

import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from image_finetune.monitoring.profile import build_profile
from image_finetune.monitoring.summaries import image_statistics
from image_finetune.serving.models import LoadedModel
from image_finetune.serving.monitor import MAX_QUEUED, MIN_SHARE, Monitor, Sampler
from image_finetune.serving.operate_metrics import OperateMetrics
from image_finetune.serving.settings import OperateSettings
from tests.support import wait_until

CLASSES, WIDTH, SIZE = 4, 12, 8


def answers(rng, n: int, dark: bool = False):
    """Images and the summaries a model would give them (probabilities, embeddings)."""
    images = rng.integers(0, 60 if dark else 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    logits = rng.normal(0, 1, (n, CLASSES))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return images, probabilities.astype(np.float32), rng.normal(0, 1, (n, WIDTH))


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    rng = np.random.default_rng(0)
    images, probabilities, embeddings = answers(rng, 400)
    profile = build_profile(
        [f"c{i}" for i in range(CLASSES)],
        probabilities,
        embeddings,
        image_statistics(images),
        rng.normal(0, 1, (300, WIDTH)),
        dimensions=4,
    )
    return LoadedModel(
        None, "3", profile.class_names, SIZE, "resize", profile=profile, summaries="one-pass model"
    )


def monitor(
    tmp_path=None, window: int = 100, cpu_share: float = 1.0
) -> tuple[Monitor, CollectorRegistry]:
    registry = CollectorRegistry()
    settings = OperateSettings(
        monitor_window=window,
        monitor_record_dir=tmp_path,
        monitor_record_max=2,
        monitor_cpu_share=cpu_share,
    )
    return Monitor(settings, OperateMetrics(registry)), registry


def add(target: Monitor, model: LoadedModel, rng, n: int, dark: bool = False) -> None:
    images, probabilities, embeddings = answers(rng, n, dark)
    target.add(model, images, probabilities, model.profile.project(embeddings))


def test_answers_beyond_the_queue_are_dropped_and_counted_never_waited_for(model):
    target, registry = monitor()  # its thread not started: nothing is taken off the queue
    rng = np.random.default_rng(1)
    start = time.monotonic()
    for _ in range(MAX_QUEUED + 5):
        add(target, model, rng, 3)
    assert time.monotonic() - start < 5
    assert (
        registry.get_sample_value("image_finetune_monitor_dropped_total", {"model_version": "3"})
        == 15
    )


def test_full_windows_are_tested_clean_then_drifted_and_recorded(model, tmp_path):
    target, registry = monitor(tmp_path)
    target.start()
    try:
        rng = np.random.default_rng(2)
        for _ in range(4):
            add(target, model, rng, 25)
        wait_until(lambda: target.windows_tested == 1, timeout=30)
        state = target.state(model)
        assert state["drift"] is False and state["last_window"]["window_size"] == 100
        for _ in range(4):
            add(target, model, rng, 25, dark=True)
        wait_until(lambda: target.windows_tested == 2, timeout=30)
        state = target.state(model)
        assert state["drift"] is True and state["tests"]["brightness"]["drift"]
        assert (
            registry.get_sample_value(
                "image_finetune_drift_detected", {"model_version": "3", "test": "overall"}
            )
            == 1
        )
        assert (
            registry.get_sample_value("image_finetune_monitor_images_total", {"model_version": "3"})
            == 200
        )
        add(target, model, rng, 50)
        add(target, model, rng, 50)
        wait_until(lambda: target.windows_tested == 3, timeout=30)
    finally:
        target.stop()
    assert len(list(tmp_path.glob("window-v3-*.npz"))) == 2  # the newest two kept


def test_a_new_version_starts_a_new_window(model):
    target, _ = monitor()
    target.start()
    try:
        rng = np.random.default_rng(3)
        add(target, model, rng, 60)
        other = LoadedModel(
            None,
            "4",
            model.class_names,
            SIZE,
            "resize",
            profile=model.profile,
            summaries="one-pass model",
        )
        add(target, other, rng, 30)
        wait_until(lambda: target.state(other)["images_in_window"] == 30, timeout=30)
        assert target.windows_tested == 0
    finally:
        target.stop()


def test_an_unmonitored_version_adds_nothing(model):
    target, registry = monitor()
    plain = LoadedModel(None, "5", model.class_names, SIZE, "resize")
    for _ in range(MAX_QUEUED + 5):  # not even queued: nothing to drop
        target.add(plain, *answers(np.random.default_rng(4), 3)[:2], None)
    assert (
        registry.get_sample_value("image_finetune_monitor_dropped_total", {"model_version": "5"})
        is None
    )


def test_under_load_a_fixed_share_is_sampled_into_the_window_and_the_rest_counted(model):
    target, registry = monitor(cpu_share=0.001)  # testing may take a thousandth of a core
    target.start()
    try:
        rng = np.random.default_rng(5)
        add(target, model, rng, 100)  # the first window: every image, then the share is set
        wait_until(lambda: target.windows_tested == 1, timeout=30)
        share = target.state(model)["sample_share"]
        assert MIN_SHARE <= share < 1.0
        assert (
            registry.get_sample_value("image_finetune_monitor_sample_share", {"model_version": "3"})
            == share
        )
        for _ in range(20):
            add(target, model, rng, 50)
        labels = {"model_version": "3"}
        wait_until(
            lambda: (
                (registry.get_sample_value("image_finetune_monitor_images_total", labels) or 0)
                + registry.get_sample_value("image_finetune_monitor_skipped_total", labels)
                == 1100
            ),
            timeout=30,
        )
        skipped = registry.get_sample_value("image_finetune_monitor_skipped_total", labels)
        assert skipped >= 1000 * (1 - share) - 100  # about the share, never a burst
        assert registry.get_sample_value("image_finetune_monitor_dropped_total", labels) is None
    finally:
        target.stop()


def test_the_share_keeps_testing_within_the_cpu_share_at_the_rate_seen():
    sampler = Sampler()
    assert sampler.pick(10) is None and sampler.share == 1.0  # every image until a test
    sampler.since -= 10.0  # 1000 images offered in 10 s: 100 a second
    sampler.seen = 1000
    # A window of 500 costs 2 s: at 10% of a core, 25 images a second can be tested.
    assert sampler.retune(2.0, 500, 0.1) == pytest.approx(0.25, rel=0.01)
    picked = sampler.pick(10_000)
    assert 2200 < len(picked) < 2800 and len(set(picked.tolist())) == len(picked)
    sampler.since -= 10.0  # a quiet period: 10 images a second, all can be tested
    sampler.seen = 100
    assert sampler.retune(2.0, 500, 0.1) == 1.0
