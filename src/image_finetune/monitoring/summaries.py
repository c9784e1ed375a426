"""What is kept of each image a model answers: its class probabilities, its pooled backbone
embedding (projected later, by the reference profile) and four cheap image statistics. The
statistics are pure numpy; the embedding model imports keras only when it is built."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

    from image_finetune.data.rows import Rows

IMAGE_STATISTICS = ("brightness", "contrast", "saturation", "sharpness")
# The summaries model's two outputs, by the names every exported engine keeps.
PROBABILITIES, EMBEDDING = "probabilities", "embedding"
# ITU-R BT.601 luma weights: brightness as a viewer perceives it.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
CHUNK = 256  # images per pass: float32 copies of a chunk stay small whatever N is


def image_statistics(images: np.ndarray) -> np.ndarray:
    """float32 [N, 4] per uint8 image [N, H, W, 3]: mean luma (0-1), luma standard deviation
    (contrast), mean HSV saturation, and the variance of the 4-neighbour Laplacian of the
    luma (sharpness: blur lowers it, noise raises it)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"image_statistics needs [N, H, W, 3] images, got {images.shape}")
    if images.shape[1] < 3 or images.shape[2] < 3:
        raise ValueError(
            f"images of {images.shape[1]}x{images.shape[2]} are too small "
            "for a sharpness measure (3x3 at least)"
        )
    out = np.empty((len(images), len(IMAGE_STATISTICS)), dtype=np.float32)
    for start in range(0, len(images), CHUNK):
        out[start : start + CHUNK] = _chunk_statistics(images[start : start + CHUNK])
    return out


def _chunk_statistics(images: np.ndarray) -> np.ndarray:
    pixels = images.astype(np.float32) / 255.0
    # channel by channel: numpy's reductions and products over a last axis of 3 are slow
    # inner loops, and this runs on the server's monitor thread beside the answers
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    luma = red * LUMA_WEIGHTS[0] + green * LUMA_WEIGHTS[1] + blue * LUMA_WEIGHTS[2]
    brightness = luma.mean(axis=(1, 2))
    contrast = luma.std(axis=(1, 2))
    high = np.maximum(np.maximum(red, green), blue)
    low = np.minimum(np.minimum(red, green), blue)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-12), 0.0).mean(axis=(1, 2))
    laplacian = (
        luma[:, :-2, 1:-1]
        + luma[:, 2:, 1:-1]
        + luma[:, 1:-1, :-2]
        + luma[:, 1:-1, 2:]
        - 4.0 * luma[:, 1:-1, 1:-1]
    )
    sharpness = laplacian.var(axis=(1, 2))
    return np.stack([brightness, contrast, saturation, sharpness], axis=1)


def embedding_model(classifier: keras.Model) -> keras.Model:
    """A model mapping the classifier's uint8 input to ``[probabilities, pooled_embedding]``
    in one forward pass: the classifier's own layers, its head's pooling tapped on the way.

    Works for the classifiers ``training.model.build_classifier`` makes (a chain of layers
    ending in the ``head``: pooling, dropout, softmax); anything else is a clear ValueError."""
    import keras

    from image_finetune.training.model import classifier_parts

    parts = classifier_parts(classifier)
    head, pool = parts.head, parts.pool
    inputs = keras.Input(classifier.input_shape[1:], dtype="uint8", name="image")
    x = inputs
    for layer in classifier.layers[1:]:
        if layer is head:
            break
        x = layer(x, training=False) if isinstance(layer, keras.Model) else layer(x)
    pooled = pool(x)
    probabilities = x = pooled
    for layer in (parts.dropout, parts.softmax):
        probabilities = x = layer(x)
    return keras.Model(inputs, [probabilities, pooled], name=f"{classifier.name}_summaries")


def projecting_model(
    summaries: keras.Model, mean: np.ndarray, components: np.ndarray
) -> keras.Model:
    """An :func:`embedding_model` whose second output is already projected ([N, k]: the
    pooled embedding minus ``mean``, on the rows of ``components``), inside the graph. In the
    server no numpy matrix product runs per answer: OpenBLAS's threads spin after each one,
    beside TensorFlow's, and on 2 cores that cost a third of the throughput (measured)."""
    import keras

    probabilities, pooled = summaries.outputs
    projected = keras.ops.matmul(
        pooled - np.asarray(mean, np.float32), np.asarray(components, np.float32).T
    )
    return keras.Model(
        summaries.inputs, [probabilities, projected], name=f"{summaries.name}_projected"
    )


def summarise_outputs(
    outputs: Callable[[np.ndarray], dict[str, np.ndarray]], images: Rows, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, C], pooled embeddings [N, D]) of uint8 images, float32, in batches,
    from a predictor's named outputs (``Predictor.outputs``: ``probabilities`` and
    ``embedding``), on whatever engine and precision it runs."""
    probabilities, embeddings = [], []
    for start in range(0, len(images), batch_size):
        named = outputs(np.asarray(images[start : start + batch_size]))
        if EMBEDDING not in named:
            raise ValueError("the model has no embedding output to summarise")
        probabilities.append(np.asarray(named[PROBABILITIES], dtype=np.float32))
        embeddings.append(np.asarray(named[EMBEDDING], dtype=np.float32))
    if not probabilities:
        raise ValueError("no images to summarise")
    return np.concatenate(probabilities), np.concatenate(embeddings)


def summarise(
    model: keras.Model, images: Rows, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, C], pooled embeddings [N, D]) of uint8 images, float32, in batches,
    from an :func:`embedding_model` (its two outputs, named as an engine names them)."""

    def outputs(batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip((PROBABILITIES, EMBEDDING), model.predict_on_batch(batch), strict=True))

    return summarise_outputs(outputs, images, batch_size)
