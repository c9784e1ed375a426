"""Labelled feedback, stored durably: one SQLite file (``IMAGE_FINETUNE_FEEDBACK_URI``), one
row per labelled image with what each model version predicted for it and the image itself.
The server writes it, ``feedback export`` turns it into an image-folder tree, and
``rollout`` reads the paired predictions. Bounded: past ``max_rows`` rows or ``max_bytes`` of
images new feedback is refused (nothing already labelled is dropped) until an operator
exports and clears it.

Why the image is stored with its label: the label is only worth something together with
the exact pixels that were classified. The server keeps a short-lived copy of each answered
image (bounded in count, bytes and time, in memory) and writes it here only when a label
arrives, so the training set grows with what the model really saw, and a client cannot pair
a label with a different image than the one answered.

Beside the labels, the store keeps the retrain watermark: the newest ``received_at`` of the
labels a completed retraining was given. Labels received after it are the *new* ones that
``monitor``'s ``min_labels`` counts; the watermark moves only when a retraining ran to its end
(``advance_watermark``), so labels a failed or skipped retraining never used stay new."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, astuple, dataclass, fields
from pathlib import Path

import numpy as np

from image_finetune.errors import ConfigError, MissingInputError

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
WATERMARK_SCHEMA = """
CREATE TABLE IF NOT EXISTS retrain_watermarks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    watermark REAL NOT NULL,
    recorded_at REAL NOT NULL,
    note TEXT NOT NULL
)"""
MAX_WATERMARKS = 1000  # the newest kept: a history for operators, bounded
EXPORT_RECORD = "feedback-export.json"  # what an export says of itself, beside the tree
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_BYTES = 2 * 1024**3  # of stored images


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

    def __init__(
        self, uri: str, max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int = DEFAULT_MAX_BYTES
    ):
        self.path, self.max_rows, self.max_bytes = store_path(uri), max_rows, max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an accepted label survives a crash
        self._db.execute(SCHEMA)
        self._db.execute(WATERMARK_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, record: FeedbackRecord) -> None:
        """Store one labelled image; FeedbackRefused (``duplicate``, ``store_full``)
        changes nothing."""
        marks = ", ".join("?" * len(COLUMNS))
        with self._lock:
            rows, stored = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(image)), 0) FROM feedback"
            ).fetchone()
            if rows >= self.max_rows or stored + len(record.image or b"") > self.max_bytes:
                raise FeedbackRefused(
                    "store_full",
                    f"the feedback store is full ({rows} of "
                    f"{self.max_rows} labelled images, {stored} of "
                    f"{self.max_bytes} bytes): export it first",
                )
            try:
                with self._db:
                    self._db.execute(
                        f"INSERT INTO feedback ({', '.join(COLUMNS)}) VALUES ({marks})",
                        astuple(record),
                    )
            except sqlite3.IntegrityError:
                raise FeedbackRefused(
                    "duplicate",
                    f"request {record.request_id} image {record.image_index} is already labelled",
                ) from None

    def _count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]

    def count(self) -> int:
        with self._lock:
            return self._count()

    def watermark(self) -> float:
        """The newest ``received_at`` a completed retraining used (0.0: none yet)."""
        with self._lock:
            return float(
                self._db.execute(
                    "SELECT COALESCE(MAX(watermark), 0.0) FROM retrain_watermarks"
                ).fetchone()[0]
            )

    def advance_watermark(self, to: float, note: str) -> bool:
        """Labels received up to ``to`` were used by a retraining that ran to its end; False
        (and nothing changes) where the watermark is already there or past it."""
        with self._lock, self._db:
            current = self._db.execute(
                "SELECT COALESCE(MAX(watermark), 0.0) FROM retrain_watermarks"
            ).fetchone()[0]
            if to <= current:
                return False
            self._db.execute(
                "INSERT INTO retrain_watermarks (watermark, recorded_at, note) VALUES (?, ?, ?)",
                (float(to), time.time(), note[:1000]),
            )
            self._db.execute(
                "DELETE FROM retrain_watermarks WHERE id NOT IN (SELECT id FROM "
                "retrain_watermarks ORDER BY id DESC LIMIT ?)",
                (MAX_WATERMARKS,),
            )
            return True

    def watermark_history(self) -> list[tuple[float, float, str]]:
        """(watermark, when it was recorded, why) of the kept retrainings, oldest first."""
        with self._lock:
            return self._db.execute(
                "SELECT watermark, recorded_at, note FROM retrain_watermarks ORDER BY id"
            ).fetchall()

    def records(self, with_images: bool = False) -> Iterator[FeedbackRecord]:
        """Every labelled image, oldest first (images left out unless asked for)."""
        columns = [c if with_images or c not in ("image",) else "NULL" for c in COLUMNS]
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(columns)} FROM feedback "
                "ORDER BY received_at, request_id, image_index"
            ).fetchall()
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
        found = [
            r
            for r in self.records()
            if {r.served_version, r.other_version} == {champion, challenger}
            and r.other_predicted is not None
        ]

        def column(version: str, confidence: bool) -> np.ndarray:
            values = [
                (r.served_confidence if r.served_version == version else r.other_confidence)
                if confidence
                else r.predicted_by(version)
                for r in found
            ]
            return np.asarray(values, dtype=float if confidence else object)

        return LabelledPairs(
            np.asarray([r.label for r in found], dtype=object),
            column(champion, False),
            column(challenger, False),
            column(champion, True),
            column(challenger, True),
        )


@dataclass(frozen=True)
class ExportRecord:
    """What an export of the store says of itself (``EXPORT_RECORD`` at its top): the
    images written, how many were received after the retrain watermark, the watermark then,
    and the newest ``received_at`` exported (where a completed retraining moves the
    watermark to)."""

    images: int
    new_images: int
    watermark: float
    newest_received_at: float

    def write(self, folder: Path) -> None:
        (Path(folder) / EXPORT_RECORD).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path) -> ExportRecord | None:
        """The record of the export in ``folder``; None where it is not an export (a folder
        of labelled images made by hand); ValueError where the record is unreadable."""
        path = Path(folder) / EXPORT_RECORD
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            record = cls(
                int(raw["images"]),
                int(raw["new_images"]),
                float(raw["watermark"]),
                float(raw["newest_received_at"]),
            )
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a feedback export's record ({exc})") from None
        if not 0 <= record.new_images <= record.images:
            raise ValueError(f"{path}: {record.new_images} new of {record.images} images")
        return record


def open_existing_store(feedback_uri: str | None) -> FeedbackStore:
    """The server's feedback store; it must exist (a typo must not create an empty one)."""
    if not feedback_uri:
        raise ConfigError(
            "no feedback store: pass --feedback-uri or set "
            "IMAGE_FINETUNE_FEEDBACK_URI (the server's)"
        )
    try:
        path = store_path(feedback_uri)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not path.is_file():
        raise MissingInputError(f"no feedback store at {path}")
    return FeedbackStore(feedback_uri)


def mark_export_retrained(feedback_uri: str | None, record: ExportRecord, note: str) -> dict:
    """A retraining given the export that ``record`` describes ran to its end: its labels are
    no longer new. The watermark moves to the newest label exported, so labels that arrived
    meanwhile stay new."""
    store = open_existing_store(feedback_uri)
    try:
        moved = store.advance_watermark(record.newest_received_at, note)
        return {"watermark": store.watermark(), "advanced": moved}
    finally:
        store.close()
