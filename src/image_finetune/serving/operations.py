"""Operating the served model: drift monitoring, request ids, labelled feedback,
champion/challenger rollout, wired beside the inference routes: ``GET /monitoring``,
``POST /feedback``, ``GET /rollout``. The routes of app.py call ``classify`` and
``answered``; everything else happens here, and nothing here makes an answer wait."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from image_finetune.monitoring.feedback_store import FeedbackRefused, FeedbackStore
from image_finetune.serving.batcher import MicroBatcher, Overloaded
from image_finetune.serving.errors import Rejected
from image_finetune.serving.feedback import (
    AnsweredImage,
    RecentRequests,
    TokenBucket,
    record_for,
)
from image_finetune.serving.models import LoadedModel, ModelHolder
from image_finetune.serving.monitor import Monitor
from image_finetune.serving.operate_metrics import OperateMetrics
from image_finetune.serving.reading import read_body
from image_finetune.serving.rollout import CANARY, ChallengerHolder, Rollout
from image_finetune.serving.settings import ServeSettings

log = logging.getLogger(__name__)
MAX_FEEDBACK_BYTES = 4096
Classify = Callable[[np.ndarray], Awaitable[tuple[np.ndarray, LoadedModel]]]


class FeedbackMessage(BaseModel):
    """``POST /feedback``: the true label of one image of an answered request."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(max_length=64)
    label: str = Field(max_length=256)
    image_index: int = Field(0, ge=0, description="which image of a multi-image request")


class Operations:
    """Request ids, feedback and rollout of one server."""

    def __init__(
        self,
        settings: ServeSettings,
        holder: ModelHolder,
        metrics: OperateMetrics,
        predict_with: Callable[[ModelHolder], Callable],
    ):
        operate = settings.operate
        self.settings, self.holder, self.metrics = settings, holder, metrics
        self.store = (
            FeedbackStore(
                operate.feedback_uri,
                operate.feedback_max_rows,
                operate.feedback_max_store_mib * 1024 * 1024,
            )
            if operate.feedback_uri
            else None
        )
        self.recent = RecentRequests(
            operate.feedback_max_requests,
            operate.feedback_max_image_mib * 1024 * 1024,
            operate.feedback_ttl_seconds,
        )
        self.bucket = TokenBucket(operate.feedback_rate, operate.feedback_burst)
        self.monitor = Monitor(operate, metrics)
        challenger = None
        if operate.rollout != "off":
            challenger = ChallengerHolder(
                settings.model_copy(update={"alias": operate.challenger_alias})
            )
        self.rollout = Rollout(
            operate.rollout, operate.canary_percent, challenger, metrics, settings.max_batch_size
        )
        self.canary_batcher = (
            MicroBatcher(
                predict_with(challenger),
                settings.max_batch_size,
                settings.max_wait_ms / 1000,
                settings.max_queued_images,
            )
            if challenger is not None
            else None
        )

    def start(self) -> None:
        self.monitor.start()
        if self.canary_batcher is not None:
            self.canary_batcher.start()
        self.rollout.start()
        if self.store is not None:
            self.metrics.set_accuracy(self.store.accuracy_by_version())

    def stop(self) -> None:
        self.monitor.stop()
        self.rollout.stop()
        if self.canary_batcher is not None:
            self.canary_batcher.stop()
        if self.store is not None:
            self.store.close()

    async def classify(
        self, images: np.ndarray, request_id: str, champion_classify: Classify
    ) -> tuple[np.ndarray, LoadedModel, str]:
        """The probabilities, the model that computed them and its role (the champion's
        batcher hands its answers to the drift monitor itself: app.py)."""
        role = self.rollout.role_for(request_id, self.holder.current)
        start = time.monotonic()
        if role == CANARY:
            assert self.canary_batcher is not None  # a canary role means a challenger is served
            try:
                outputs, model = await self.canary_batcher.submit(images)
            except Overloaded as exc:
                raise Rejected(503, f"overloaded: {exc}; retry", {"Retry-After": "1"}) from exc
        else:
            outputs, model = await champion_classify(images)
        probabilities, _ = model.split(outputs)
        if self.rollout.mode != "off":
            self.rollout.record(model, role, probabilities, time.monotonic() - start)
        return probabilities, model, role

    def answered(
        self,
        request_id: str,
        images: np.ndarray,
        files: list[bytes] | None,
        probabilities: np.ndarray,
        model: LoadedModel,
        role: str,
    ) -> None:
        """Remember the answer for feedback and have the other version answer a copy."""
        best = probabilities.argmax(axis=1)
        answered = [
            AnsweredImage(
                model.version,
                role,
                model.class_names[b],
                float(probabilities[i, b]),
                model.class_names,
                files[i] if files else images[i] if self.store else b"",
            )
            for i, b in enumerate(best)
        ]
        if self.store is not None:
            self.recent.remember(request_id, answered)
        self.rollout.copy_to_other(images, answered, role, self.holder.current)


def add_operation_routes(
    router: APIRouter, operations: Operations, off_loop: Callable[..., Awaitable]
) -> None:
    """``GET /monitoring``, ``POST /feedback`` and ``GET /rollout``."""

    @router.get("/monitoring", tags=["operations"])
    async def monitoring() -> dict:
        """Drift monitoring: the served version, the window, the last window's tests."""
        return operations.monitor.state(operations.holder.current)

    @router.post(
        "/feedback",
        status_code=201,
        tags=["operations"],
        responses={
            status: {"description": why}
            for status, why in (
                (404, "unknown request id"),
                (410, "expired request id"),
                (409, "already labelled"),
                (422, "unknown label or malformed"),
                (429, "too much feedback; retry"),
                (503, "feedback is not configured"),
                (507, "the feedback store is full"),
            )
        },
    )
    async def feedback(request: Request):
        """The true label of an answered image: ``{"request_id": ..., "label": ...}``."""
        return await take_feedback(operations, request, off_loop)

    @router.get("/rollout", tags=["operations"])
    async def rollout() -> dict:
        """Champion and challenger: mode, versions, per-version figures, labelled pairs."""
        return await off_loop(rollout_state, operations)


async def take_feedback(operations: Operations, request: Request, off_loop) -> JSONResponse:
    def refuse(
        status: int, outcome: str, message: str, version: str = "", headers=None
    ) -> NoReturn:
        operations.metrics.feedback.labels(version, outcome).inc()
        raise Rejected(status, message, headers)

    message, store = await _read_feedback(operations, request, refuse)
    try:
        image = operations.recent.claim(message.request_id, message.image_index)
    except Rejected as exc:
        refuse(exc.status, "unknown_request", exc.message)
    except FeedbackRefused as exc:
        refuse(409, exc.reason, str(exc))
    version = image.served_version
    if message.label not in image.class_names:
        operations.recent.unclaim(image)
        refuse(
            422,
            "unknown_label",
            f"unknown label {message.label[:64]!r}: v{version} "
            f"knows {', '.join(image.class_names)}",
            version,
        )
    record = await off_loop(
        record_for, message.request_id, message.image_index, message.label, image
    )
    try:
        await off_loop(store.add, record)
    except FeedbackRefused as exc:
        if exc.reason != "duplicate":
            operations.recent.unclaim(image)
        refuse(409 if exc.reason == "duplicate" else 507, exc.reason, str(exc), version)
    operations.metrics.feedback.labels(version, "accepted").inc()
    await off_loop(lambda: operations.metrics.set_accuracy(store.accuracy_by_version()))
    return JSONResponse(
        {
            "request_id": message.request_id,
            "image_index": message.image_index,
            "label": message.label,
            "model_version": version,
            "correct": image.predicted == message.label,
        },
        status_code=201,
    )


async def _read_feedback(operations: Operations, request: Request, refuse):
    """The feedback message of ``request`` and the store it goes to, or a refusal: rate
    limited, feedback not configured, or a body that is not the message."""
    if not operations.bucket.take():
        refuse(429, "rate_limited", "too much feedback: retry later", headers={"Retry-After": "1"})
    if operations.store is None:
        refuse(
            503,
            "not_configured",
            "feedback is not configured on this server (IMAGE_FINETUNE_FEEDBACK_URI)",
        )
    body = await read_body(request, MAX_FEEDBACK_BYTES, operations.settings.body_timeout_seconds)
    try:
        return FeedbackMessage.model_validate_json(body), operations.store
    except ValidationError as exc:
        refuse(
            422,
            "invalid",
            'feedback must be JSON {"request_id": str, "label": str, '
            f'"image_index": int >= 0}}: {exc.errors()[0]["msg"]}',
        )


def rollout_state(operations: Operations) -> dict:
    """What ``GET /rollout`` answers."""
    champion = operations.holder.current
    challenger = operations.rollout.challenger(champion)
    accuracy = operations.store.accuracy_by_version() if operations.store else {}
    versions = operations.rollout.figures()
    for version, (correct, total) in accuracy.items():
        versions.setdefault(version, {}).update(
            labelled=total, online_accuracy=correct / total if total else None
        )
    pairs = (
        len(operations.store.pairs(champion.version, challenger.version))
        if operations.store and champion and challenger
        else 0
    )
    return {
        "mode": operations.rollout.mode,
        "canary_percent": operations.rollout.percent,
        "champion": champion.version if champion else None,
        "challenger": challenger.version if challenger else None,
        "versions": versions,
        "labelled_pairs": pairs,
    }
