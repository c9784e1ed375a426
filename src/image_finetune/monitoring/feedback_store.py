"""Labelled feedback, stored durably: one SQLite file (``IMAGE_FINETUNE_FEEDBACK_URI``), one
row per labelled image with what each model version predicted for it and the image itself.
The server writes it, ``feedback export`` turns it into an image-folder tree, and
``rollout`` reads the paired predictions. Bounded: past ``max_rows`` new feedback is refused
(nothing already labelled is dropped) until an operator exports and clears it.

Why the image is stored with its label: the label is only worth something together with
the exact pixels that were classified. The server keeps a short-lived copy of each answered
image (bounded in count, bytes and time, in memory) and writes it here only when a label
arrives, so the training set grows with what the model really saw, and a client cannot pair
a label with a different image than the one answered."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL,
    image_index INTEGER NOT NULL,
    label TEXT NOT NULL,
    received_at REAL NOT NULL,
    served_version TEXT NOT NULL,
    served_role TEXT NOT NULL,
    served_predicted TEXT NOT NULL,
    served_confidence REAL NOT NULL,
    other_version TEXT,
    other_predicted TEXT,
    other_confidence REAL,
    image BLOB,
    image_format TEXT,
    PRIMARY KEY (request_id, image_index)
)"""
DEFAULT_MAX_ROWS = 100_000


class FeedbackRefused(Exception):
    """Feedback the store does not take; ``reason`` names why (a metric's outcome label)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FeedbackRecord:
    """One labelled image: the version that answered it, the other version's answer where
    one answered a copy (shadow, or the champion beside a canary), and the image."""

    request_id: str
    image_index: int
    label: str
    received_at: float
    served_version: str
    served_role: str  # champion or canary
    served_predicted: str
    served_confidence: float
    other_version: str | None = None
    other_predicted: str | None = None
    other_confidence: float | None = None
    image: bytes | None = None
    image_format: str | None = None  # png or jpeg

    def predicted_by(self, version: str) -> str | None:
        """What ``version`` predicted for this image (None: it did not answer it)."""
        if self.served_version == version:
            return self.served_predicted
        return self.other_predicted if self.other_version == version else None


@dataclass(frozen=True)
class LabelledPairs:
    """Two versions' predictions on the same labelled images."""

    labels: np.ndarray
    champion: np.ndarray  # predicted class names
    challenger: np.ndarray
    champion_confidence: np.ndarray
    challenger_confidence: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


COLUMNS = tuple(f.name for f in fields(FeedbackRecord))


def store_path(uri: str) -> Path:
    """The SQLite file of a feedback URI: ``sqlite:///abs/path.db`` or a plain path."""
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else uri
    if "://" in path:
        raise ValueError(f"feedback URI {uri!r}: only sqlite:///<path> or a file path")
    return Path(path)


class FeedbackStore:
    """The feedback table in one SQLite file (WAL: readers never block the server)."""

    def __init__(self, uri: str, max_rows: int = DEFAULT_MAX_ROWS):
        self.path, self.max_rows = store_path(uri), max_rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an accepted label survives a crash
        self._db.execute(SCHEMA)
        self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, record: FeedbackRecord) -> None:
        """Store one labelled image; FeedbackRefused (``duplicate``, ``store_full``)
        changes nothing."""
        marks = ", ".join("?" * len(COLUMNS))
        with self._lock:
            if self._count() >= self.max_rows:
                raise FeedbackRefused("store_full", f"the feedback store holds its maximum of "
                                      f"{self.max_rows} labelled images: export it first")
            try:
                with self._db:
                    self._db.execute(f"INSERT INTO feedback ({', '.join(COLUMNS)}) "
                                     f"VALUES ({marks})", astuple(record))
            except sqlite3.IntegrityError:
                raise FeedbackRefused("duplicate", f"request {record.request_id} image "
                                      f"{record.image_index} is already labelled") from None

    def _count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]

    def count(self) -> int:
        with self._lock:
            return self._count()

    def records(self, with_images: bool = False) -> Iterator[FeedbackRecord]:
        """Every labelled image, oldest first (images left out unless asked for)."""
        columns = [c if with_images or c not in ("image",) else "NULL" for c in COLUMNS]
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(columns)} FROM feedback "
                                    "ORDER BY received_at, request_id, image_index").fetchall()
        for row in rows:
            yield FeedbackRecord(*row)

    def accuracy_by_version(self) -> dict[str, tuple[int, int]]:
        """(correct, labelled) per version, counting each version's answer on every
        labelled image it answered (served, or as the other version)."""
        query = """SELECT version, SUM(predicted = label), COUNT(*) FROM (
                       SELECT served_version AS version, served_predicted AS predicted, label
                       FROM feedback
                       UNION ALL
                       SELECT other_version, other_predicted, label FROM feedback
                       WHERE other_version IS NOT NULL AND other_predicted IS NOT NULL)
                   GROUP BY version"""
        with self._lock:
            rows = self._db.execute(query).fetchall()
        return {str(version): (int(correct), int(total)) for version, correct, total in rows}

    def pairs(self, champion: str, challenger: str) -> LabelledPairs:
        """Both versions' predictions on every image labelled while both answered it."""
        found = [r for r in self.records() if {r.served_version, r.other_version}
                 == {champion, challenger} and r.other_predicted is not None]

        def column(version: str, confidence: bool) -> np.ndarray:
            values = [(r.served_confidence if r.served_version == version
                       else r.other_confidence) if confidence else r.predicted_by(version)
                      for r in found]
            return np.asarray(values, dtype=float if confidence else object)

        return LabelledPairs(np.asarray([r.label for r in found], dtype=object),
                             column(champion, False), column(challenger, False),
                             column(champion, True), column(challenger, True))


