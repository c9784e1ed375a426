"""The ``evaluate`` step: a saved classifier on one split of the canonical dataset:
metrics, confusion matrix, gallery, latency and one HTML report."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from image_finetune import engines
from image_finetune.config import Params
from image_finetune.data.canonical import load_split, read_manifest
from image_finetune.inference import measure_latency, predict_proba
from image_finetune.metrics import STRUCTURED, classification_metrics, flatten_metrics_with_classes
from image_finetune.metrics import flatten_metrics as flatten_metrics  # the component logs these
from image_finetune.report import plot_confusion, plot_gallery, write_html
from image_finetune.steps.layout import (
    CONFUSION_JSON,
    CONFUSION_PAIRS_CSV,
    CONFUSION_PNG,
    DETAILS_FILE,
    GALLERY_PNG,
    METRICS_FILE,
    PREDICTIONS_FILE,
    read_held_out_scores,
    write_metrics_file,
)

log = logging.getLogger(__name__)


def evaluate_classifier(
    params: Params,
    data: Path,
    model: Path,
    out: Path,
    split: str = "test",
    title: str | None = None,
    metrics_file: Path | None = None,
    engine: Path | None = None,
) -> dict:
    """Evaluate the classifier in ``model`` on ``split``; write every result to ``out`` and
    the scalar metrics, per class too, to ``metrics_file`` (flat: name -> number) if given.
    ``engine``: the export-engine step's folder; accuracy and latency are then measured on
    the engine and precision that will serve (its manifest says which), else on Keras.
    An attempt's validation scores that train-rung recorded beside ``model`` (on the
    cached features it validated on) are used, not computed again."""
    loaded = load_split(data, split)
    class_names = read_manifest(data)["class_names"]
    classifier, model_files = engines.serving_predictor(model, engine)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    labels = np.asarray(loaded.labels)
    recorded = None if split != "validation" or engine else _recorded_scores(params, model, labels)
    probs, scored_on = recorded or _probabilities(params, classifier, loaded.images)
    metrics = classification_metrics(labels, probs, class_names, params.evaluate, params.train.seed)
    metrics["predict_seconds"] = round(time.perf_counter() - start, 2)
    metrics["scored_on"] = scored_on
    metrics["latency"] = measure_latency(
        classifier, tuple(loaded.images.shape[1:]), params.evaluate.latency_runs
    )
    metrics["model_size_mb"] = sum(path.stat().st_size for path in model_files) / 1e6
    metrics["flip_tta"] = params.evaluate.flip_tta
    metrics["engine"], metrics["precision"] = classifier.engine, classifier.precision
    _write_results(
        out, metrics, probs, labels, loaded.images, class_names, params.evaluate.gallery_size
    )
    write_html(out, title or f"Evaluation on {split}", metrics, class_names)
    if metrics_file is not None:
        write_metrics_file(metrics_file, flatten_metrics_with_classes(metrics))
    log.info(
        "%s: accuracy %.4f macro F1 %.4f (%d images)",
        title or split,
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["count"],
    )
    return metrics


def _recorded_scores(params: Params, model: Path, labels: np.ndarray):
    """(probabilities, what computed them) that train-rung recorded beside ``model`` for
    these validation ``labels``, or None."""
    recorded = read_held_out_scores(model, labels, params.evaluate.flip_tta)
    if recorded is not None:
        log.info("%s: the validation scores train-rung recorded (%s)", model, recorded[1])
    return recorded


def _probabilities(params: Params, classifier, images) -> tuple[np.ndarray, str]:
    probs = predict_proba(classifier, images, params.evaluate.batch_size, params.evaluate.flip_tta)
    return probs, f"the model on {classifier.engine} {classifier.precision}"


def _write_results(
    out: Path,
    metrics: dict,
    probs: np.ndarray,
    labels: np.ndarray,
    images,
    class_names: list[str],
    gallery_size: int,
) -> None:
    np.savez_compressed(
        out / PREDICTIONS_FILE, probabilities=probs.astype(np.float32), labels=labels
    )
    plot_confusion(np.asarray(metrics["confusion_matrix"]), class_names, out / CONFUSION_PNG)
    if gallery_size:
        plot_gallery(images, labels, probs, class_names, gallery_size, out / GALLERY_PNG)
    (out / CONFUSION_JSON).write_text(
        json.dumps({"class_names": class_names, "matrix": metrics["confusion_matrix"]}) + "\n"
    )
    with (out / CONFUSION_PAIRS_CSV).open("w") as handle:
        handle.write("actual,predicted\n")
        handle.writelines(
            f"{class_names[t]},{class_names[p]}\n"
            for t, p in zip(labels, probs.argmax(axis=1), strict=True)
        )
    summary = {k: v for k, v in metrics.items() if k not in STRUCTURED}
    (out / METRICS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    (out / DETAILS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
