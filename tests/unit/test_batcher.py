"""The micro-batcher on its own: concurrent requests share model calls and each gets its own
rows; a lone request does not wait; a failing call fails only its requests; too much
queued work is refused. The "model" is a plain function of the batch."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from image_finetune.serving.batcher import BatchRecord, MicroBatcher, Overloaded


def row_sums(batch: np.ndarray) -> tuple[np.ndarray, str]:
    return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True), "v1"


class Recorder:
    def __init__(self):
        self.records: list[BatchRecord] = []
        self.lock = threading.Lock()

    def __call__(self, record: BatchRecord) -> None:
        with self.lock:
            self.records.append(record)


def run_requests(batcher: MicroBatcher, batches: list[np.ndarray]) -> list:
    async def one(images):
        with batcher.request():
            await asyncio.sleep(0)
            return await batcher.submit(images)

    async def all_of_them():
        return await asyncio.gather(*(one(images) for images in batches), return_exceptions=True)

    batcher.start()
    try:
        return asyncio.run(all_of_them())
    finally:
        batcher.stop()


def slow_row_sums(batch: np.ndarray) -> tuple[np.ndarray, str]:
    time.sleep(0.02)  # long enough for the other requests to queue behind the first call
    return row_sums(batch)


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    recorder = Recorder()
    batcher = MicroBatcher(
        slow_row_sums, max_batch_size=8, max_wait=0.05, max_queued_images=100, record=recorder
    )
    batches = [np.full((n, 2, 2, 3), i, np.int64) for i, n in enumerate([1, 2, 3, 1, 2, 1])]
    answers = run_requests(batcher, batches)
    for images, (rows, tag) in zip(batches, answers, strict=True):
        assert tag == "v1"
        assert rows.ravel().tolist() == [images[0].sum()] * len(images)
    assert sum(r.images for r in recorder.records) == 10
    assert len(recorder.records) < len(batches)
    assert all(r.images <= 8 for r in recorder.records)


def test_a_lone_request_does_not_wait_for_company():
    batcher = MicroBatcher(row_sums, max_batch_size=8, max_wait=2.0, max_queued_images=100)
    start = time.perf_counter()
    [(rows, _)] = run_requests(batcher, [np.ones((1, 2, 2, 3))])
    assert rows.item() == 12 and time.perf_counter() - start < 1.0


def test_images_of_other_shapes_go_in_other_calls():
    recorder = Recorder()
    batcher = MicroBatcher(
        row_sums, max_batch_size=64, max_wait=0.05, max_queued_images=100, record=recorder
    )
    answers = run_requests(batcher, [np.ones((1, 2, 2, 3)), np.ones((1, 4, 4, 3))])
    assert [rows.item() for rows, _ in answers] == [12, 48]
    assert len(recorder.records) == 2


def test_a_failing_call_fails_its_requests_and_the_worker_goes_on():
    def fail_on_negatives(batch):
        if (batch < 0).any():
            raise ValueError("negative pixels")
        return row_sums(batch)

    batcher = MicroBatcher(fail_on_negatives, max_batch_size=1, max_wait=0.0, max_queued_images=100)
    answers = run_requests(batcher, [-np.ones((1, 1, 1, 3)), np.ones((1, 1, 1, 3))])
    assert isinstance(answers[0], ValueError)
    assert answers[1][0].item() == 3


def test_too_many_queued_images_are_refused():
    batcher = MicroBatcher(row_sums, max_batch_size=8, max_wait=0.0, max_queued_images=4)
    answers = run_requests(batcher, [np.ones((5, 1, 1, 3))])
    assert isinstance(answers[0], Overloaded)


@pytest.mark.parametrize("max_wait", [0.0, 0.01])
def test_every_request_is_answered_under_load(max_wait):
    batcher = MicroBatcher(row_sums, max_batch_size=16, max_wait=max_wait, max_queued_images=10_000)
    batches = [np.full((1 + i % 3, 1, 1, 3), i) for i in range(300)]
    answers = run_requests(batcher, batches)
    assert [rows[0].item() for rows, _ in answers] == [3 * i for i in range(300)]


def test_each_model_call_is_observed_once_after_its_answers_and_a_failing_observer_is_harmless():
    seen, recorder = [], Recorder()

    def observe(images, outputs, tag):
        seen.append((images.copy(), outputs.copy(), tag))
        raise RuntimeError("the observer broke")  # answers must not notice

    batcher = MicroBatcher(
        slow_row_sums,
        max_batch_size=8,
        max_wait=0.05,
        max_queued_images=100,
        record=recorder,
        observe=observe,
    )
    batches = [np.full((n, 2, 2, 3), i, np.int64) for i, n in enumerate([1, 2, 3, 1, 2, 1])]
    answers = run_requests(batcher, batches)
    assert all(tag == "v1" for _, tag in answers)
    assert len(seen) == len(recorder.records) < len(batches)  # per call, not per request
    assert [len(images) for images, _, _ in seen] == [r.images for r in recorder.records]
    for images, outputs, tag in seen:
        assert tag == "v1" and np.array_equal(outputs, row_sums(images)[0])
    assert sorted(int(i) for images, _, _ in seen for i in images[:, 0, 0, 0]) == sorted(
        i for i, n in enumerate([1, 2, 3, 1, 2, 1]) for _ in range(n)
    )
