"""Classification metrics: accuracy with its bootstrap interval, macro and per-class
precision / recall / F1, confusion matrix, most confused pairs, calibration."""

from __future__ import annotations

import numpy as np

from image_finetune.config import EvaluateParams
from image_finetune.stats import bootstrap_accuracy_interval, per_image_correct

# Not scalar metrics: left out of flat metric listings (MLflow, KFP).
STRUCTURED = ("per_class", "confusion_matrix", "most_confused")


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """ECE over equal-width confidence bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def most_confused_pairs(matrix: np.ndarray, class_names: list[str], top: int) -> list[dict]:
    """The ``top`` off-diagonal cells of the confusion matrix (true -> predicted)."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:top]
    pairs = []
    for flat in order:
        true, pred = np.unravel_index(flat, off.shape)
        if off[true, pred] == 0:
            break
        pairs.append(
            {
                "true": class_names[true],
                "predicted": class_names[pred],
                "count": int(off[true, pred]),
            }
        )
    return pairs


def classification_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    params: EvaluateParams,
    seed: int = 0,
) -> dict:
    """Accuracy, macro and per-class P/R/F1, confusion matrix, ECE, bootstrap CI."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    predicted = probs.argmax(axis=1)
    correct = per_image_correct(probs, labels)
    indices = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=0
    )
    matrix = confusion_matrix(labels, predicted, labels=indices)
    low, high = bootstrap_accuracy_interval(correct, params.bootstrap_samples, seed)
    return {
        "count": int(len(labels)),
        "accuracy": float(correct.mean()),
        "accuracy_ci95": [low, high],
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "min_class_recall": float(recall.min()),
        "ece": expected_calibration_error(probs.max(axis=1), correct, params.calibration_bins),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": matrix.tolist(),
        "most_confused": most_confused_pairs(matrix, class_names, params.most_confused),
    }


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Every scalar figure under a dotted name (``latency.batch1_p50_ms``); the accuracy
    interval as ``accuracy_ci95.low``/``.high``; structured results left out."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if key in STRUCTURED:
            continue
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{name}."))
        elif isinstance(value, list | tuple) and len(value) == 2 and key.endswith("ci95"):
            flat[f"{name}.low"], flat[f"{name}.high"] = float(value[0]), float(value[1])
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def flatten_metrics_with_classes(metrics: dict) -> dict[str, float]:
    """:func:`flatten_metrics` plus each class's metrics as ``per_class.<class>.<metric>``:
    for metric files (DVC), not metric stores, which refuse many characters a class folder's
    name may hold."""
    per_class = {
        f"per_class.{name}.{metric}": float(value)
        for name, values in metrics.get("per_class", {}).items()
        for metric, value in values.items()
    }
    return {**flatten_metrics(metrics), **per_class}
