"""The ``feedback export`` step: the labelled feedback the server stored, as an image-folder
tree ``train/<class>/<request id>-<image index>.jpg|png`` that the ingest reads (a folder
source) beside the original data on the next run. Each file is the image the server answered,
byte for byte as the client sent it (a raw OIP tensor as a PNG). Exporting again writes the
same names: the tree grows, nothing is duplicated."""

from __future__ import annotations

from pathlib import Path

from image_finetune.errors import ConfigError, MissingInputError
from image_finetune.monitoring.feedback_store import FeedbackStore, store_path

SPLIT = "train"
SUFFIXES = {"jpeg": ".jpg", "png": ".png"}


def safe_folder_name(label: str) -> bool:
    """Whether a label can be a class folder (no path tricks, no hidden folder)."""
    return bool(label) and not label.startswith(".") and "/" not in label and "\\" not in label


def open_store(feedback_uri: str | None) -> FeedbackStore:
    """The server's feedback store; it must exist (a typo must not create an empty one)."""
    if not feedback_uri:
        raise ConfigError("no feedback store: pass --feedback-uri or set "
                          "IMAGE_FINETUNE_FEEDBACK_URI (the server's)")
    try:
        path = store_path(feedback_uri)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not path.is_file():
        raise MissingInputError(f"no feedback store at {path}")
    return FeedbackStore(feedback_uri)


def export_feedback(feedback_uri: str | None, out: Path) -> dict:
    """Write every labelled image under ``out/train/<label>/``; the counts written and
    skipped (no image kept, or a label that cannot be a folder name)."""
    store = open_store(feedback_uri)
    written, skipped, classes = 0, [], set()
    try:
        for record in store.records(with_images=True):
            name = f"{record.request_id}-{record.image_index}"
            if not record.image or not safe_folder_name(record.label):
                skipped.append(name)
                continue
            folder = out / SPLIT / record.label
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}{SUFFIXES[record.image_format]}").write_bytes(record.image)
            written += 1
            classes.add(record.label)
    finally:
        store.close()
    return {"out": str(out), "images": written, "classes": sorted(classes),
            "skipped": skipped}
