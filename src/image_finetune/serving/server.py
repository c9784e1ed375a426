"""What the HTTP routes share: the model holder, the decode pool and budget, the
micro-batcher, the metrics and the operations (canary, shadow, feedback) behind them."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from image_finetune.registry.client import redact
from image_finetune.serving.batcher import MicroBatcher, Overloaded
from image_finetune.serving.budget import DecodeBudget
from image_finetune.serving.decode import plan_decode
from image_finetune.serving.errors import Rejected
from image_finetune.serving.metrics import ServingMetrics
from image_finetune.serving.models import LoadedModel, ModelHolder
from image_finetune.serving.operations import Operations
from image_finetune.serving.settings import ServeSettings


@dataclass
class Server:
    """The parts behind the routes."""

    settings: ServeSettings
    holder: ModelHolder
    batcher: MicroBatcher
    metrics: ServingMetrics
    pool: ThreadPoolExecutor
    budget: DecodeBudget
    operations: Operations

    def model(self) -> LoadedModel:
        """The model being served; 503 while there is none."""
        model = self.holder.current
        if model is None:
            raise Rejected(
                503,
                f"no model loaded yet ({redact(self.holder.problem or '')})",
                {"Retry-After": str(int(self.settings.retry_seconds))},
            )
        return model

    def model_named(self, name: str, version: str | None = None) -> LoadedModel:
        """The model a ``/v2/models/{name}[/versions/{version}]`` path names; 404 otherwise."""
        if name != self.settings.model_name:
            raise Rejected(
                404, f"unknown model {name!r}: this server serves {self.settings.model_name!r}"
            )
        model = self.model()
        if version is not None and version != model.version:
            raise Rejected(404, f"{name} version {version} is not served (v{model.version} is)")
        return model

    async def off_loop(self, function, *args):
        """Run CPU work (decoding, JSON of tensors) in the decode pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(function, *args))

    async def decode(self, files: list[tuple[str, bytes]], size: int, how: str) -> np.ndarray:
        """The images as the model's batch: their headers read and their pixels counted
        (413 over the request's budget) off the decode pool, then decoded in it once they fit
        the decode budget."""
        plan = await asyncio.to_thread(plan_decode, files, size, self.settings, how)
        return await self.budget.run(plan.pixels, self.pool, plan.decode)

    async def classify(self, images: np.ndarray) -> tuple[np.ndarray, LoadedModel]:
        """Probabilities from the batcher, and the model that computed them."""
        try:
            return await self.batcher.submit(images)
        except Overloaded as exc:
            raise Rejected(503, f"overloaded: {exc}; retry", {"Retry-After": "1"}) from exc


def predict_current(
    holder: ModelHolder, max_batch_size: int, batch: np.ndarray
) -> tuple[np.ndarray, LoadedModel]:
    """Probabilities from whichever model is current (on the batcher's thread), in model
    calls of at most ``max_batch_size`` images: a request larger than that is split, since
    per image a large batch is slower on a CPU than a few of the right size."""
    model = holder.current
    if model is None:
        raise Rejected(503, "no model loaded")
    chunks = [
        model.answer(batch[start : start + max_batch_size])
        for start in range(0, len(batch), max_batch_size)
    ]
    return np.concatenate(chunks), model
