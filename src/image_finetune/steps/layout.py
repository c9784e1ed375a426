"""The files steps hand each other: their names inside a step's output folder and how to
read them back. One place, so that a step never guesses another step's layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# validate
VALIDATION_RESULT = "result.json"
# train-rung (an attempt's folder)
HISTORY_FILE = "history.csv"
RESULT_FILE = "result.json"
# evaluate
DETAILS_FILE = "details.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.npz"
# export-engine: the engine folder (its model files: engines.MODEL_FILES) and its manifest,
# engines.MANIFEST_FILE spelled again so that every stage reading this module does not
# depend on the engines module (a unit test holds the two equal)
ENGINE_FOLDER = "engine"
ENGINE_MANIFEST = "engine.json"
# monitor
DRIFT_JSON = "drift.json"
DRIFT_HTML = "drift.html"
# gate-attempt, gate
DECISION_FILE = "decision.json"
# climb the ladder (the train stage's folder)
SUMMARY_FILE = "summary.json"
SELECTED = "selected"
EVALUATION = "evaluation"


def attempt_folder(models: Path, index: int) -> Path:
    """Attempt ``index``'s folder inside the train stage's output."""
    return models / f"attempt_{index}"


def write_figures(path: Path, figures: dict[str, float]) -> None:
    """A metrics file DVC reads whole: one flat JSON object of numbers, sorted by name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(figures.items())), indent=2) + "\n")


def read_evaluation(evaluation: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """(metrics, probabilities, labels) of an evaluate step's output folder."""
    metrics = json.loads((evaluation / DETAILS_FILE).read_text())
    predictions = np.load(evaluation / PREDICTIONS_FILE)
    return metrics, predictions["probabilities"], predictions["labels"]
