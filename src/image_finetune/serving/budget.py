"""The global decode budget: how many pixels all requests together may be decoding at once.

Decoding costs CPU and memory in proportion to the pixels decoded, not to the bytes sent:
a few kilobytes of solid PNG declare 16 megapixels. Each request's images are counted before
any of them is decoded (``decode.plan_decode``) and over the per-request budget refused with
413; what fits waits here, briefly, for room among the requests being decoded, and gets 503
(retry) rather than queueing without end. A small request fits beside a large one where a
large one would not, so a client sending one photo is not stuck behind one sending 64.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from image_finetune.serving.errors import Rejected

T = TypeVar("T")


class DecodeBudget:
    """At most ``capacity`` pixels being decoded at once; a request waits at most ``wait``
    seconds for room."""

    def __init__(self, capacity: int, wait: float):
        self.capacity, self.wait = capacity, wait
        self.used = 0
        self._changed = asyncio.Event()

    async def run(self, pixels: int, pool: Executor, work: Callable[[], T]) -> T:
        """``work()`` in ``pool`` once ``pixels`` fit; they are counted until it has finished
        in its thread (a client that goes away does not free the decoder early)."""
        await self._acquire(pixels)
        loop = asyncio.get_running_loop()
        try:
            done = pool.submit(work)
        except BaseException:
            self._release(pixels)
            raise
        done.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release, pixels))
        return await asyncio.wrap_future(done)

    async def _acquire(self, pixels: int) -> None:
        if pixels > self.capacity:
            raise Rejected(
                413,
                f"{pixels} pixels to decode, over the server's decode budget of {self.capacity}",
            )
        try:
            async with asyncio.timeout(self.wait):
                while self.used + pixels > self.capacity:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError as exc:
            raise Rejected(
                503,
                f"the decoders are busy ({self.used} of {self.capacity} "
                "pixels being decoded); retry",
                {"Retry-After": "1"},
            ) from exc
        self.used += pixels

    def _release(self, pixels: int) -> None:
        self.used -= pixels
        self._changed.set()
