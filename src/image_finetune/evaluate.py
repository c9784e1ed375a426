"""The ``evaluate`` step: metrics, confusion matrix, error analysis, calibration,
latency and one self-contained HTML report."""

from __future__ import annotations

import base64
import html
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from image_finetune.config import EvaluateParams

if TYPE_CHECKING:  # keras stays out of imports that only need the file names below
    import keras

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.npz"


def predict_proba(
    model: keras.Model, images: np.ndarray, batch_size: int, flip_tta: bool
) -> np.ndarray:
    """Class probabilities; with flip TTA, the mean over the image and its mirror."""
    from image_finetune.train import embed

    probs = embed(model, images, batch_size, "predict")
    if flip_tta:
        mirrored = np.asarray(images)[:, :, ::-1]
        probs = (probs + embed(model, mirrored, batch_size, "predict mirrored")) / 2.0
    return probs


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


def bootstrap_accuracy_interval(
    correct: np.ndarray, samples: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval for accuracy."""
    from scipy.stats import bootstrap

    result = bootstrap(
        (correct.astype(float),), np.mean, n_resamples=samples, confidence_level=level,
        method="percentile", rng=np.random.default_rng(seed), vectorized=True,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


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
        pairs.append({"true": class_names[true], "predicted": class_names[pred],
                      "count": int(off[true, pred])})
    return pairs


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, class_names: list[str], params: EvaluateParams,
    seed: int = 0,
) -> dict:
    """Accuracy, macro and per-class P/R/F1, confusion matrix, ECE, bootstrap CI."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    predicted = probs.argmax(axis=1)
    correct = predicted == labels
    indices = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=0)
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


def measure_latency(model: keras.Model, input_shape: tuple, runs: int) -> dict:
    """p50/p95 latency (ms) at batch 1 and 256, and throughput at 256."""
    figures = {}
    for batch in (1, 256):
        images = np.random.default_rng(0).integers(0, 256, (batch, *input_shape), dtype=np.uint8)
        model.predict_on_batch(images)  # warm-up: tracing and allocation
        times = []
        for _ in range(runs if batch == 1 else max(3, runs // 10)):
            start = time.perf_counter()
            np.asarray(model.predict_on_batch(images))
            times.append((time.perf_counter() - start) * 1000)
        figures[f"batch{batch}_p50_ms"] = float(np.percentile(times, 50))
        figures[f"batch{batch}_p95_ms"] = float(np.percentile(times, 95))
        if batch > 1:
            figures[f"batch{batch}_images_per_second"] = float(
                batch / (np.median(times) / 1000.0))
    return figures


def _png_base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: Path) -> None:
    """Row-normalised confusion-matrix heatmap with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(7.5, 6.5))
    image = axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for (row, col), count in np.ndenumerate(matrix):
        axis.text(col, row, str(count), ha="center", va="center", fontsize=7,
                  color="white" if rates[row, col] > 0.5 else "black")
    figure.colorbar(image, fraction=0.046, pad=0.04, label="share of the true class")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_gallery(
    images: np.ndarray, labels: np.ndarray, probs: np.ndarray, class_names: list[str],
    count: int, path: Path,
) -> int:
    """The most confidently wrong predictions, with true and predicted labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:count]
    columns = 6
    rows = max(1, int(np.ceil(len(wrong) / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.8, rows * 2.0))
    for axis in np.ravel(axes):
        axis.axis("off")
    for axis, index in zip(np.ravel(axes), wrong, strict=False):
        axis.imshow(images[index], interpolation="nearest")
        axis.set_title(f"true {class_names[labels[index]]}\npred {class_names[predicted[index]]}"
                       f" {probs[index, predicted[index]]:.2f}", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return len(wrong)


def write_html(out_dir: Path, title: str, metrics: dict, class_names: list[str]) -> Path:
    """One self-contained HTML page: headline figures, per-class table, pictures inline."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}"
        f"</td><td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>"
        for name, v in metrics["per_class"].items()
    )
    pairs = "".join(
        f"<li>{html.escape(p['true'])} &rarr; {html.escape(p['predicted'])}: {p['count']}</li>"
        for p in metrics["most_confused"]
    )
    latency = metrics.get("latency", {})
    low, high = metrics["accuracy_ci95"]
    pictures = "".join(
        f"<h2>{caption}</h2><img alt='{caption}' src='data:image/png;base64,"
        f"{_png_base64(out_dir / name)}'>"
        for caption, name in (("Confusion matrix", "confusion_matrix.png"),
                              ("Most confident mistakes", "misclassified.png"))
        if (out_dir / name).exists()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td,th{{padding:2px 10px;
text-align:right}}td:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p><b>Accuracy {metrics['accuracy']:.4f}</b> (95% CI {low:.4f}-{high:.4f}, n={metrics['count']}),
macro F1 {metrics['macro_f1']:.4f}, macro precision {metrics['macro_precision']:.4f},
macro recall {metrics['macro_recall']:.4f}, lowest class recall {metrics['min_class_recall']:.4f},
ECE {metrics['ece']:.4f}.</p>
<p>Latency: batch 1 p50 {latency.get('batch1_p50_ms', float('nan')):.1f} ms,
p95 {latency.get('batch1_p95_ms', float('nan')):.1f} ms; batch 256
{latency.get('batch256_images_per_second', float('nan')):.0f} images/s.
Model size {metrics.get('model_size_mb', float('nan')):.1f} MB.</p>
<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>
<th>support</th></tr>{rows}</table>
<h2>Most confused pairs</h2><ol>{pairs}</ol>{pictures}</body></html>"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path


def evaluate_model(
    model_path: Path,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    params: EvaluateParams,
    out_dir: Path,
    title: str,
    seed: int = 0,
) -> dict:
    """Evaluate a saved classifier on one split; write metrics, pictures and the report."""
    from image_finetune.train import load_classifier

    model = load_classifier(model_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    probs = predict_proba(model, images, params.batch_size, params.flip_tta)
    metrics = classification_metrics(np.asarray(labels), probs, class_names, params, seed)
    metrics["predict_seconds"] = round(time.perf_counter() - start, 2)
    metrics["latency"] = measure_latency(model, tuple(images.shape[1:]), params.latency_runs)
    metrics["model_size_mb"] = Path(model_path).stat().st_size / 1e6
    metrics["flip_tta"] = params.flip_tta
    np.savez_compressed(out_dir / PREDICTIONS_FILE, probabilities=probs.astype(np.float32),
                        labels=np.asarray(labels))
    matrix = np.asarray(metrics["confusion_matrix"])
    plot_confusion(matrix, class_names, out_dir / "confusion_matrix.png")
    if params.gallery_size:
        plot_gallery(np.asarray(images), np.asarray(labels), probs, class_names,
                     params.gallery_size, out_dir / "misclassified.png")
    (out_dir / "confusion_matrix.json").write_text(json.dumps(
        {"class_names": class_names, "matrix": metrics["confusion_matrix"]}) + "\n")
    predicted = probs.argmax(axis=1)
    with (out_dir / "confusion_pairs.csv").open("w") as handle:
        handle.write("actual,predicted\n")
        handle.writelines(f"{class_names[t]},{class_names[p]}\n"
                          for t, p in zip(np.asarray(labels), predicted, strict=True))
    summary = {k: v for k, v in metrics.items()
               if k not in ("confusion_matrix", "per_class", "most_confused")}
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "details.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_html(out_dir, title, metrics, class_names)
    log.info("%s: accuracy %.4f macro F1 %.4f (%d images)", title, metrics["accuracy"],
             metrics["macro_f1"], metrics["count"])
    return metrics
