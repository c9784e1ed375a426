"""The ``feedback export`` step: the labelled feedback the server stored, as an image-folder
tree ``train/<class>/<request id>-<image index>.jpg|png`` that the ingest reads (a folder
source) beside the original data on the next run. Each file is the image the server answered,
byte for byte as the client sent it (a raw OIP tensor as a PNG). Exporting again writes the
same names: the tree grows, nothing is duplicated. Its record (``feedback-export.json`` at
the top, which the ingest skips) says how many of the images are new since the last
completed retraining; ``mark_retrained`` moves that watermark once a retraining that was
given the export has run to its end."""

from __future__ import annotations

from pathlib import Path

from image_finetune.errors import MissingInputError
from image_finetune.monitoring.feedback_store import (
    ExportRecord,
    mark_export_retrained,
    open_existing_store,
)
from image_finetune.steps.layout import EXPORT_RECORD, read_export_record

SPLIT = "train"
SUFFIXES = {"jpeg": ".jpg", "png": ".png"}


def safe_folder_name(label: str) -> bool:
    """Whether a label can be a class folder (no path tricks, no hidden folder)."""
    return bool(label) and not label.startswith(".") and "/" not in label and "\\" not in label


def export_feedback(feedback_uri: str | None, out: Path) -> dict:
    """Write every labelled image under ``out/train/<label>/`` and the export's record; the
    counts written, new since the retrain watermark, and skipped (no image kept, or a label
    that cannot be a folder name)."""
    store = open_existing_store(feedback_uri)
    written, new, newest, skipped, classes = 0, 0, 0.0, [], set()
    out.mkdir(parents=True, exist_ok=True)
    try:
        watermark = store.watermark()
        for record in store.records(with_images=True):
            name = f"{record.request_id}-{record.image_index}"
            if (
                not record.image
                or record.image_format is None
                or not safe_folder_name(record.label)
            ):
                skipped.append(name)
                continue
            folder = out / SPLIT / record.label
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}{SUFFIXES[record.image_format]}").write_bytes(record.image)
            written += 1
            new += record.received_at > watermark
            newest = max(newest, record.received_at)
            classes.add(record.label)
    finally:
        store.close()
    ExportRecord(written, new, watermark, max(newest, watermark)).write(out)
    return {
        "out": str(out),
        "images": written,
        "new_since_retrain": new,
        "classes": sorted(classes),
        "skipped": skipped,
    }


def mark_retrained(feedback_uri: str | None, export: Path, note: str = "retrained") -> dict:
    """A retraining given ``export`` ran to its end: its labels are no longer new (the
    watermark moves to the newest label exported)."""
    record = read_export_record(export)
    if record is None:
        raise MissingInputError(
            f"{export}: no {EXPORT_RECORD}: not an export of image-finetune feedback"
        )
    return mark_export_retrained(feedback_uri, record, note)
