"""Loading a saved classifier and running it in batches: what training, evaluation,
serving and batch prediction share."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from image_finetune.errors import MissingInputError

if TYPE_CHECKING:  # keras is imported where a model is loaded, not by importers of this module
    import keras

    from image_finetune.data.rows import Rows


def require_classifier(path: Path) -> Path:
    """``path``, a saved classifier's file; a clear error where it is missing."""
    if not Path(path).is_file():
        raise MissingInputError(f"{path}: model not found (run the train step first)")
    return Path(path)


def load_classifier(path: Path) -> keras.Model:
    """Load a saved classifier, with a clear error where it is missing."""
    import keras

    return keras.saving.load_model(require_classifier(path), compile=False)


def predict_batches(
    model,
    images: Rows,
    batch_size: int,
    desc: str,
    out: np.ndarray | None = None,
    mirror: bool = False,
) -> np.ndarray:
    """Run ``model`` over uint8 images (an array or a row view) in batches with a progress
    bar; float32 out. Given ``out`` (a memory-mapped file, say), each batch is written there
    as it comes, so memory holds one batch, not every output twice. ``mirror``: each batch
    flipped left to right first."""
    from tqdm import tqdm

    chunks = []
    for start in tqdm(
        range(0, len(images), batch_size), desc=desc, unit="batch", mininterval=2.0, file=sys.stderr
    ):
        batch = np.asarray(images[start : start + batch_size])
        if mirror:
            batch = batch[:, :, ::-1]
        values = np.asarray(model.predict_on_batch(batch), dtype=np.float32)
        if out is None:
            chunks.append(values)
        else:
            out[start : start + len(batch)] = values
    return out if out is not None else np.concatenate(chunks)


def predict_proba(model, images: Rows, batch_size: int, flip_tta: bool) -> np.ndarray:
    """Class probabilities; with flip TTA, the mean over the image and its mirror."""
    probs = predict_batches(model, images, batch_size, "predict")
    if flip_tta:
        mirrored = predict_batches(model, images, batch_size, "predict mirrored", mirror=True)
        probs = (probs + mirrored) / 2.0
    return probs


def measure_latency(model, input_shape: tuple, runs: int) -> dict:
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
            figures[f"batch{batch}_images_per_second"] = float(batch / (np.median(times) / 1000.0))
    return figures


def top_k(probabilities: np.ndarray, class_names: list[str], k: int) -> list[list[dict]]:
    """The k most probable classes of each row, most probable first."""
    order = np.argsort(-probabilities, axis=1)[:, :k]
    return [
        [{"class": class_names[i], "probability": round(float(row[i]), 6)} for i in best]
        for row, best in zip(probabilities, order, strict=True)
    ]


def image_fit(manifest: dict) -> str:
    """How a model trained on this canonical dataset fits images of another size when it is
    used: as ingest fitted them, except that a client cannot refuse photos for their size,
    so a model whose data had to be S x S gets them stretched (a square photo is unchanged)."""
    policy = manifest.get("params", {}).get("on_wrong_size", "reject")
    return "resize" if policy == "reject" else policy


def class_names_or_indices(names: list[str] | None, model) -> list[str]:
    """The given class names, or the output indices as names when none are known."""
    return names or [str(i) for i in range(model_classes(model))]


def model_classes(model) -> int:
    """How many classes a Keras classifier or an engine's Predictor gives probabilities for."""
    classes = getattr(model, "num_classes", None)
    return int(classes if classes is not None else model.output_shape[-1])


def model_input_size(model) -> int:
    """The side of the square uint8 images a Keras classifier ([N, S, S, 3]) or an engine's
    Predictor (input_shape (S, S, 3)) takes."""
    if hasattr(model, "num_classes"):  # a Predictor: (H, W, C)
        return int(model.input_shape[0])
    return int(model.input_shape[1])
