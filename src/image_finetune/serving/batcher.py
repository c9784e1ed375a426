"""Dynamic micro-batching: requests that arrive together share one model call.

Handlers ``await submit(images)``; one worker thread takes the oldest waiting request,
adds the others waiting behind it (up to ``max_batch_size`` images), runs the model once
and hands each request its rows. While more requests are in flight than it holds, the
worker waits up to ``max_wait`` for them; a lone request never waits. The event loop only
queues and wakes futures, so probes and metrics never stand behind inference.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """One request's images, waiting for the model."""

    images: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.monotonic)

    def answer(self, result) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, result, None)

    def fail(self, error: BaseException) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, None, error)


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.done():  # the client went away and the handler was cancelled
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


@dataclass(frozen=True)
class BatchRecord:
    """What a model call did, for the metrics."""

    images: int
    requests: int
    queued_images: int  # left waiting behind this batch
    waited_seconds: float  # the oldest request's time in the queue
    seconds: float  # the model call


STOP = object()  # queued by stop(): the worker ends after what was queued before it


class Overloaded(Exception):
    """More images are waiting than the server accepts to queue."""


Tag = TypeVar("Tag")  # what answered a batch (the serving code's LoadedModel)


class MicroBatcher(Generic[Tag]):
    """Coalesces concurrent requests into model calls on one worker thread.

    ``infer(batch)`` returns ``(outputs, tag)``: one output row per image and a tag handed
    to every request of the batch (the model version that answered). ``observe(images,
    outputs, tag)`` sees each batch once its answers are out (the drift monitor's hand-off:
    one per model call, not per request); it must return at once."""

    def __init__(
        self,
        infer: Callable[[np.ndarray], tuple[np.ndarray, Tag]],
        max_batch_size: int,
        max_wait: float,
        max_queued_images: int,
        record: Callable[[BatchRecord], None] = lambda record: None,
        observe: Callable[[np.ndarray, np.ndarray, Tag], None] | None = None,
    ):
        self.infer, self.record, self.observe = infer, record, observe
        self.max_batch_size, self.max_wait = max_batch_size, max_wait
        self.max_queued_images = max_queued_images
        self.in_flight = 0  # requests between their start and their answer (loop thread)
        self.queued_images = 0  # images submitted and not yet in a model call
        self._count_lock = threading.Lock()  # queued_images changes on both threads
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._held: Pending | None = None  # taken, but for the next batch
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="micro-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the queued work, then end the worker."""
        self._queue.put(STOP)
        self._thread.join(timeout=30)

    @contextmanager
    def request(self):
        """Marks a request in flight (decoding, queued or running): the worker waits for
        the requests it knows are coming."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def submit(self, images: np.ndarray) -> tuple[np.ndarray, Tag]:
        """The model's rows for ``images``, and the batch's tag."""
        with self._count_lock:
            if self.queued_images + len(images) > self.max_queued_images:
                raise Overloaded(f"{self.queued_images} images are already waiting")
            self.queued_images += len(images)
        loop = asyncio.get_running_loop()
        pending = Pending(images, loop.create_future(), loop)
        self._queue.put(pending)
        return await pending.future

    def _work(self) -> None:
        while not self._stopping:
            first = self._held or self._queue.get()
            self._held = None
            if first is STOP:
                return
            self._run(self._gather(first))

    def _gather(self, first: Pending) -> list[Pending]:
        """``first`` and the requests behind it that fit in one model call."""
        batch, size = [first], len(first.images)
        deadline = first.queued_at + self.max_wait
        while size < self.max_batch_size:
            expecting = self.in_flight > len(batch)
            timeout = max(deadline - time.monotonic(), 0.0) if expecting else 0.0
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                break
            if item is STOP:
                self._stopping = True
                break
            if not self._fits(item, first, size):
                self._held = item
                break
            batch.append(item)
            size += len(item.images)
        return batch

    def _fits(self, item: Pending, first: Pending, size: int) -> bool:
        return (
            item.images.shape[1:] == first.images.shape[1:]
            and size + len(item.images) <= self.max_batch_size
        )

    def _run(self, batch: list[Pending]) -> None:
        images = np.concatenate([p.images for p in batch])
        with self._count_lock:
            self.queued_images -= len(images)
        start = time.monotonic()
        try:
            outputs, tag = self.infer(images)
        except Exception as exc:  # the batch fails, the worker goes on
            log.exception("inference failed for a batch of %d images", len(images))
            for pending in batch:
                pending.fail(exc)
            return
        seconds = time.monotonic() - start
        offset = 0
        for pending in batch:
            pending.answer((outputs[offset : offset + len(pending.images)], tag))
            offset += len(pending.images)
        self.record(
            BatchRecord(
                len(images), len(batch), self.queued_images, start - batch[0].queued_at, seconds
            )
        )
        if self.observe is not None:
            try:
                self.observe(images, outputs, tag)
            except Exception:  # watching never stops answering
                log.exception("observing a batch of %d images failed", len(images))
