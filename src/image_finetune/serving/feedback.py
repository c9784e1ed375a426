"""Request ids and labelled feedback in the server.

Each answered request gets an id ``<issued ms, hex>-<random>``; the server remembers the
recent ones (bounded in count, in image bytes and in time, whatever the traffic) with what
each model version predicted for each image and a short-lived copy of the image, so that
``POST /feedback`` can check an id and store the label with the very image it names. A
well-formed id that is no longer remembered (evicted, past its time, or issued before a
restart) is expired (410), anything else is unknown (404): told apart by the id's form alone,
without keeping anything per forgotten id."""

from __future__ import annotations

import io
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from image_finetune.monitoring.feedback_store import FeedbackRecord, FeedbackRefused
from image_finetune.serving.errors import Rejected

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID = re.compile(r"^([0-9a-f]{11,12})-[0-9a-f]{16}$")


def new_request_id() -> str:
    return f"{int(time.time() * 1000):x}-{secrets.token_hex(8)}"


def issued_at(request_id: str) -> float | None:
    """When the server issued a well-formed id (seconds), None for anything else."""
    match = REQUEST_ID.match(request_id)
    return int(match.group(1), 16) / 1000 if match else None


@dataclass
class AnsweredImage:
    """One image of an answered request: each version's answer and the image itself."""

    served_version: str
    served_role: str
    predicted: str
    confidence: float
    class_names: list[str]  # the answering model's (shared, not copied)
    image: bytes | np.ndarray  # the encoded file, or the raw uint8 tensor (OIP)
    other_version: str | None = None
    other_predicted: str | None = None
    other_confidence: float | None = None
    labelled: bool = False

    @property
    def size(self) -> int:
        return len(self.image) if isinstance(self.image, bytes) else self.image.nbytes


@dataclass
class Answered:
    at: float
    images: list[AnsweredImage] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(image.size for image in self.images)


class RecentRequests:
    """Answered requests by id, oldest forgotten first: at most ``max_requests`` ids and
    ``max_bytes`` of images, none older than ``ttl`` seconds."""

    def __init__(self, max_requests: int, max_bytes: int, ttl: float):
        self.max_requests, self.max_bytes, self.ttl = max_requests, max_bytes, ttl
        self.bytes = 0
        self._entries: OrderedDict[str, Answered] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, request_id: str, images: list[AnsweredImage]) -> None:
        entry = Answered(time.time(), images)
        if entry.size > self.max_bytes:  # too large to keep: its images get no feedback
            for image in images:
                image.image = b""
        with self._lock:
            self._entries[request_id] = entry
            self.bytes += entry.size
            self._forget_old()

    def _forget_old(self) -> None:
        cutoff = time.time() - self.ttl
        while self._entries:
            oldest_id, oldest = next(iter(self._entries.items()))
            if (
                len(self._entries) <= self.max_requests
                and self.bytes <= self.max_bytes
                and oldest.at >= cutoff
            ):
                return
            del self._entries[oldest_id]
            self.bytes -= oldest.size

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, request_id: str) -> Answered:
        """The request's entry; Rejected 404 (never issued here) or 410 (forgotten)."""
        with self._lock:
            self._forget_old()
            entry = self._entries.get(request_id)
        if entry is not None:
            return entry
        issued = issued_at(request_id)
        if issued is not None and issued <= time.time() + 1:
            raise Rejected(
                410,
                f"request {request_id} has expired: feedback is taken for "
                f"{self.ttl:.0f} s after an answer, while this server process "
                "still remembers the request (not across a restart)",
            )
        raise Rejected(
            404,
            f"unknown request id {request_id[:64]!r}: use the request_id "
            "(or X-Request-Id header) of an answer of this server",
        )

    def claim(self, request_id: str, index: int) -> AnsweredImage:
        """The image to label, marked labelled; 404/410 as ``find``, 409 once labelled."""
        entry = self.find(request_id)
        if not 0 <= index < len(entry.images):
            raise Rejected(
                422,
                f"request {request_id} has {len(entry.images)} image(s): "
                f"image_index {index} is not one of them",
            )
        with self._lock:
            image = entry.images[index]
            if image.labelled:
                raise FeedbackRefused(
                    "duplicate", f"request {request_id} image {index} is already labelled"
                )
            image.labelled = True
        return image

    def unclaim(self, image: AnsweredImage) -> None:
        with self._lock:
            image.labelled = False


class TokenBucket:
    """``rate`` requests a second on average, bursts of ``burst``; thread-safe."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens, self.updated = float(burst), time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens < 1:
                return False
            self.tokens -= 1
            return True


def encoded(image: bytes | np.ndarray) -> tuple[bytes, str]:
    """The image as a file and its format: the client's own bytes, or a PNG of a tensor."""
    if isinstance(image, np.ndarray):
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return buffer.getvalue(), "png"
    return image, "png" if image.startswith(b"\x89PNG") else "jpeg"


def record_for(request_id: str, index: int, label: str, answered: AnsweredImage) -> FeedbackRecord:
    """The row to store for a label (encodes a tensor image: run off the event loop)."""
    data, kind = encoded(answered.image) if answered.size else (None, None)
    return FeedbackRecord(
        request_id,
        index,
        label,
        time.time(),
        answered.served_version,
        answered.served_role,
        answered.predicted,
        answered.confidence,
        answered.other_version,
        answered.other_predicted,
        answered.other_confidence,
        data,
        kind,
    )
