"""The files steps hand each other: their names inside a step's output folder and how to
read them back. One place, so that a step never guesses another step's layout, and no step
imports another to read its output. Names that domain modules below the steps also need are
defined there (``file_names``, the feedback store's export record) and re-exported here."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from image_finetune.errors import MissingInputError
from image_finetune.file_names import (
    CONFUSION_PNG,
    DATA_MANIFEST,
    ENGINE_MANIFEST,
    GALLERY_PNG,
    MODEL_FILE,
    REPORT_HTML,
)
from image_finetune.gate import Decision
from image_finetune.hashing import sha256_file
from image_finetune.ladder import AttemptRecord
from image_finetune.monitoring.feedback_store import EXPORT_RECORD, ExportRecord

# Re-exported: defined below the steps, where domain modules read or write them too.
__all__ = [
    "CONFUSION_PNG",
    "DATA_MANIFEST",
    "ENGINE_MANIFEST",
    "EXPORT_RECORD",
    "GALLERY_PNG",
    "MODEL_FILE",
    "REPORT_HTML",
]

# validate, train-rung (an attempt's folder): the step's result
RESULT_FILE = "result.json"
# validate: the Data Docs site and two of the tables the expectations ran on
DATA_DOCS_FOLDER = "data_docs"
CLASS_COUNTS_CSV = "class_counts.csv"
CHANNEL_STATS_CSV = "channel_stats.csv"
# train-rung (an attempt's folder); the classifier: MODEL_FILE
HISTORY_FILE = "history.csv"
HELD_OUT_SCORES = "validation_scores.npz"
# evaluate
DETAILS_FILE = "details.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.npz"
CONFUSION_JSON = "confusion_matrix.json"
CONFUSION_PAIRS_CSV = "confusion_pairs.csv"
# (and REPORT_HTML, CONFUSION_PNG, GALLERY_PNG; RELIABILITY_PNG: named by the model card's
# pictures, written by no step yet)
RELIABILITY_PNG = "reliability.png"
# export-engine: the engine folder (its model files: engines.MODEL_FILES; ENGINE_MANIFEST)
ENGINE_FOLDER = "engine"
# monitor
DRIFT_JSON = "drift.json"
DRIFT_HTML = "drift.html"
# gate-attempt, gate
DECISION_FILE = "decision.json"
# register (artifacts of the version's run)
CARD_MARKDOWN = "model_card.md"
CARD_HTML = "model_card.html"
# climb the ladder (the train stage's folder)
SUMMARY_FILE = "summary.json"
SELECTED = "selected"
EVALUATION = "evaluation"
# select: the selected attempt's record beside its classifier
ATTEMPT_FILE = "attempt.json"
# feedback export: its record at the top of the tree (EXPORT_RECORD)


def attempt_folder(models: Path, index: int) -> Path:
    """Attempt ``index``'s folder inside the train stage's output."""
    return models / f"attempt_{index}"


def write_metrics_file(path: Path, values: dict[str, float]) -> None:
    """A metrics file DVC reads whole: one flat JSON object of numbers, sorted by name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(values.items())), indent=2) + "\n")


def read_evaluation(evaluation: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """(metrics, probabilities, labels) of an evaluate step's output folder."""
    metrics = json.loads((evaluation / DETAILS_FILE).read_text())
    predictions = np.load(evaluation / PREDICTIONS_FILE)
    return metrics, predictions["probabilities"], predictions["labels"]


def write_held_out_scores(
    model: Path, labels: np.ndarray, probabilities: np.ndarray, mirrored: np.ndarray, source: str
) -> None:
    """Beside an attempt's ``model``: its class probabilities on the validation images and on
    their mirrored copies, how they were computed (``source``), and the model file's digest,
    so that they are only ever read for that model."""
    np.savez(
        model.parent / HELD_OUT_SCORES,
        labels=np.asarray(labels),
        probabilities=probabilities.astype(np.float32),
        mirrored=mirrored.astype(np.float32),
        source=np.asarray(source),
        model_sha256=np.asarray(sha256_file(model)),
    )


def read_held_out_scores(
    model: Path, labels: np.ndarray, flip_tta: bool
) -> tuple[np.ndarray, str] | None:
    """(probabilities, source) recorded beside ``model`` for these validation ``labels``, the
    mean with the mirrored copies' under flip TTA; None where there are none, or they belong to
    another model file or other labels (the evaluation then runs the model)."""
    try:
        with np.load(Path(model).parent / HELD_OUT_SCORES, allow_pickle=False) as scores:
            recorded = {name: scores[name] for name in scores.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    expected = ("labels", "probabilities", "mirrored", "source", "model_sha256")
    if any(name not in recorded for name in expected):
        return None
    if str(recorded["model_sha256"]) != sha256_file(model):
        return None
    if not np.array_equal(recorded["labels"], np.asarray(labels)):
        return None
    probabilities = recorded["probabilities"]
    if probabilities.shape != recorded["mirrored"].shape or len(probabilities) != len(labels):
        return None
    if flip_tta:
        probabilities = (probabilities + recorded["mirrored"]) / 2.0
    return probabilities, str(recorded["source"])


def read_records(decision_file: Path | None) -> list[AttemptRecord]:
    """The retrain loop's record as of an attempt's decision file (empty: no file)."""
    if decision_file is None:
        return []
    payload = json.loads(Path(decision_file).read_text())
    return [AttemptRecord.from_json(r) for r in payload.get("ladder", [])]


def read_summary(models: Path) -> list[AttemptRecord]:
    """The retrain loop's record from the train stage's folder."""
    summary = json.loads((models / SUMMARY_FILE).read_text())
    return [AttemptRecord.from_json(r) for r in summary["attempts"]]


def read_decision(path: Path) -> Decision:
    """A decision file written by a gate."""
    return Decision.from_json(json.loads(Path(path).read_text()))


def read_export_record(export: Path) -> ExportRecord | None:
    """The record of a feedback export (None: a folder of labels made by hand); a clear
    error where it is unreadable."""
    try:
        return ExportRecord.read(export)
    except ValueError as exc:
        raise MissingInputError(str(exc)) from None
