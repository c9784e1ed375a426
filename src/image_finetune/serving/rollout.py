"""Champion and challenger in one server (``IMAGE_FINETUNE_ROLLOUT``):

- ``shadow``: the champion answers every request; the challenger answers a copy of it off
  the response path, and its answers are only recorded (agreement, confidence, latency, and
  for labelled requests both predictions: every labelled request is a pair).
- ``canary``: a share of the requests (``IMAGE_FINETUNE_CANARY_PERCENT``, chosen by a hash
  of the request id, so the split is deterministic and reproducible) is answered by the
  challenger; the champion answers a copy of those off the response path, so each labelled
  canary request is a pair too. The champion's own requests are not paired.

A copy waits for a single worker; when the worker is behind, copies are dropped and counted,
never queued without bound and never waited for."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from image_finetune.serving.feedback import AnsweredImage
from image_finetune.serving.models import LoadedModel, MissingModelError, ModelHolder
from image_finetune.serving.operate_metrics import OperateMetrics

log = logging.getLogger(__name__)
CHAMPION, SHADOW, CANARY = "champion", "shadow", "canary"
MODES = ("off", SHADOW, CANARY)
MAX_PENDING_COPIES = 8


def in_canary(request_id: str, percent: float) -> bool:
    """Whether a request belongs to the canary's share: the same id always does."""
    bucket = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:4]) % 10_000
    return bucket < percent * 100


class ChallengerHolder(ModelHolder):
    """The challenger alias' version; none once the alias is gone (an aborted or finished
    rollout), unlike the champion, which keeps being served whatever the registry says.
    Its answers are not monitored for drift: the windows are the champion's."""

    monitored = False

    def refresh(self) -> bool:
        try:
            return super().refresh()
        except MissingModelError:
            self.current = None
            raise


@dataclass
class VersionStats:
    """Running figures of one version in this server's life."""

    requests: int = 0
    images: int = 0
    confidence_sum: float = 0.0
    latency_sum: float = 0.0
    compared: int = 0  # images both versions answered
    agreed: int = 0

    def to_json(self) -> dict:
        return {
            "requests": self.requests,
            "images": self.images,
            "mean_confidence": self.confidence_sum / self.images if self.images else None,
            "mean_latency_seconds": (self.latency_sum / self.requests if self.requests else None),
            "compared_images": self.compared,
            "agreement": self.agreed / self.compared if self.compared else None,
        }


class Rollout:
    """Routes requests between champion and challenger and answers the copies."""

    def __init__(
        self,
        mode: str,
        percent: float,
        challenger: ModelHolder | None,
        metrics: OperateMetrics,
        max_batch_size: int,
    ):
        self.mode, self.percent, self.holder = mode, percent, challenger
        self.metrics, self.max_batch_size = metrics, max_batch_size
        self.stats: dict[str, VersionStats] = {}
        self._lock = threading.Lock()
        self._pending = threading.BoundedSemaphore(MAX_PENDING_COPIES)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="rollout-copy")

    def start(self) -> None:
        if self.holder is not None:
            self.holder.start()

    def stop(self) -> None:
        if self.holder is not None:
            self.holder.stop()
        self._worker.shutdown(wait=False, cancel_futures=True)

    def challenger(self, champion: LoadedModel | None) -> LoadedModel | None:
        """The challenger, when there is one other than the champion."""
        model = self.holder.current if self.holder is not None else None
        if model is None or champion is None or model.version == champion.version:
            return None
        return model

    def role_for(self, request_id: str, champion: LoadedModel | None) -> str:
        """Who answers: the challenger for the canary's share, else the champion."""
        if (
            self.mode == CANARY
            and self.challenger(champion) is not None
            and in_canary(request_id, self.percent)
        ):
            return CANARY
        return CHAMPION

    def record(
        self,
        model: LoadedModel,
        role: str,
        probabilities: np.ndarray,
        seconds: float,
        compared: tuple[int, int] = (0, 0),
    ) -> None:
        """Count an answer of ``model`` in ``role``."""
        confidence = probabilities.max(axis=1)
        version = model.version
        self.metrics.rollout_requests.labels(version, role).inc()
        self.metrics.rollout_latency.labels(version, role).observe(seconds)
        for value in confidence:
            self.metrics.rollout_confidence.labels(version, role).observe(float(value))
        with self._lock:
            stats = self.stats.setdefault(version, VersionStats())
            stats.requests += 1
            stats.images += len(confidence)
            stats.confidence_sum += float(confidence.sum())
            stats.latency_sum += seconds
            stats.compared += compared[0]
            stats.agreed += compared[1]
            if stats.compared:
                self.metrics.rollout_agreement.labels(version).set(stats.agreed / stats.compared)

    def figures(self) -> dict[str, dict]:
        """Each version's running figures."""
        with self._lock:
            return {version: stats.to_json() for version, stats in self.stats.items()}

    def copy_to_other(
        self,
        images: np.ndarray,
        answered: list[AnsweredImage],
        role: str,
        champion: LoadedModel | None,
    ) -> None:
        """Have the other version answer a copy, off the response path (dropped and
        counted when the worker is behind)."""
        other = self._other(role, champion)
        if other is None:
            return
        if not self._pending.acquire(blocking=False):
            self.metrics.rollout_dropped.labels(other.version).inc()
            return
        future = self._worker.submit(self._answer_copy, other, images, answered, role)
        future.add_done_callback(lambda _: self._pending.release())

    def _other(self, role: str, champion: LoadedModel | None) -> LoadedModel | None:
        if role == CANARY:
            return champion
        if self.mode == SHADOW:
            return self.challenger(champion)
        return None

    def _answer_copy(
        self, other: LoadedModel, images: np.ndarray, answered: list[AnsweredImage], role: str
    ) -> None:
        start = time.monotonic()
        try:
            probabilities = np.concatenate(
                [
                    other.predict(images[i : i + self.max_batch_size])
                    for i in range(0, len(images), self.max_batch_size)
                ]
            )
        except Exception:  # a copy never fails anything
            log.exception("the %s copy of a request failed", other.version)
            return
        best = probabilities.argmax(axis=1)
        agreed = 0
        for image, index, row in zip(answered, best, probabilities, strict=True):
            image.other_version = other.version
            image.other_predicted = other.class_names[index]
            image.other_confidence = float(row[index])
            agreed += image.other_predicted == image.predicted
        copy_role = SHADOW if role == CHAMPION else CHAMPION
        # Agreement is the challenger's figure: recorded on whichever side it is.
        self.record(
            other,
            copy_role,
            probabilities,
            time.monotonic() - start,
            (len(best), agreed) if copy_role == SHADOW else (0, 0),
        )
        if copy_role == CHAMPION:
            with self._lock:
                stats = self.stats.setdefault(answered[0].served_version, VersionStats())
                stats.compared += len(best)
                stats.agreed += agreed
                self.metrics.rollout_agreement.labels(answered[0].served_version).set(
                    stats.agreed / stats.compared
                )
