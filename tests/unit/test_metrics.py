"""Evaluation metrics: calibration, bootstrap interval, confusion analysis."""

import numpy as np
import pytest

from image_finetune.config import EvaluateParams
from image_finetune.metrics import (
    classification_metrics,
    expected_calibration_error,
    flatten_metrics,
    flatten_metrics_with_classes,
    most_confused_pairs,
)
from image_finetune.stats import bootstrap_accuracy_interval

CLASSES = ["a", "b", "c"]


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    confidence = np.full(100, 0.7)
    correct = np.array([True] * 70 + [False] * 30)
    assert expected_calibration_error(confidence, correct, 10) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(100, 0.99), correct, 10) == pytest.approx(0.29)


def test_bootstrap_interval_brackets_the_accuracy_and_narrows_with_more_data():
    small = np.array([True] * 80 + [False] * 20)
    low, high = bootstrap_accuracy_interval(small, 1000, seed=0)
    assert low < 0.8 < high
    big_low, big_high = bootstrap_accuracy_interval(np.tile(small, 20), 1000, seed=0)
    assert big_high - big_low < high - low


def test_most_confused_pairs_are_ordered_off_diagonal_cells():
    matrix = np.array([[50, 7, 1], [2, 40, 0], [9, 0, 30]])
    pairs = most_confused_pairs(matrix, CLASSES, 3)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("c", "a", 9),
        ("a", "b", 7),
        ("b", "a", 2),
    ]
    assert len(most_confused_pairs(np.eye(3, dtype=int), CLASSES, 5)) == 0


def test_classification_metrics_on_a_known_case():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.9 + 0.1 / 3
    metrics = classification_metrics(labels, probs, CLASSES, EvaluateParams(bootstrap_samples=200))
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["per_class"]["a"]["recall"] == pytest.approx(0.5)
    assert metrics["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert metrics["min_class_recall"] == pytest.approx(0.5)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics["accuracy_ci95"][0] <= metrics["accuracy"] <= metrics["accuracy_ci95"][1]


def test_flat_metrics_keep_every_scalar_and_the_interval_and_drop_the_tables():
    metrics = {
        "accuracy": 0.9,
        "accuracy_ci95": [0.88, 0.92],
        "count": 100,
        "flip_tta": True,
        "latency": {"batch1_p50_ms": 9.5},
        "per_class": {"a": {"recall": 1.0}},
        "confusion_matrix": [[1]],
        "most_confused": [{"true": "a"}],
    }
    assert flatten_metrics(metrics, "test_") == {
        "test_accuracy": 0.9,
        "test_accuracy_ci95.low": 0.88,
        "test_accuracy_ci95.high": 0.92,
        "test_count": 100.0,
        "test_latency.batch1_p50_ms": 9.5,
    }


def test_metric_files_keep_each_class_and_the_interval_as_flat_numbers():
    metrics = {
        "accuracy": 0.9,
        "accuracy_ci95": [0.88, 0.92],
        "per_class": {"ship": {"recall": 0.5, "support": 10}, "a b/c": {"f1": 1.0}},
        "confusion_matrix": [[1]],
        "most_confused": [{"true": "a"}],
    }
    assert flatten_metrics_with_classes(metrics) == {
        "accuracy": 0.9,
        "accuracy_ci95.low": 0.88,
        "accuracy_ci95.high": 0.92,
        "per_class.ship.recall": 0.5,
        "per_class.ship.support": 10.0,
        "per_class.a b/c.f1": 1.0,
    }
