"""The feature cache: the frozen part of the backbone runs once per image, and the
trainable rest of the classifier trains on its cached activations.

- the stem/tail split of a backbone at ``train.cache_boundary``;
- the frozen parts embedded on a fast CPU engine (ONNX Runtime or OpenVINO, fp32), whose
  features equal Keras's within 2e-4 (measured: bench/stem_engine.py), or on Keras itself;
- cached activations (and those of mirrored copies, so horizontal flips survive caching
  and flip TTA scores the validation images on them), memory-mapped from disk and written
  atomically under unique names;
- the batches a rung trains on, read row by row from those files (or the images);
- the cache keys: everything that determines a cache, the code that shapes it included.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
from keras import layers

from image_finetune.atomic import atomic_file
from image_finetune.config import RungMode
from image_finetune.data.rows import Rows
from image_finetune.engines import (
    KERAS_ENGINE,
    Predictor,
    compile_keras,
    engine_available,
    resolve_engine,
)
from image_finetune.errors import ConfigError
from image_finetune.inference import predict_batches
from image_finetune.training.model import Classifier, backbone_layer

log = logging.getLogger(__name__)

EMBED_BATCH = 256
# The frozen parts embed in fp32 on every engine: int8 has not been shown to keep the
# trained head's accuracy (the cache key records the precision all the same).
STEM_PRECISION = "fp32"


def cache_key(*parts: object) -> str:
    """A short, stable digest of everything that determines a cached result."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split_backbone(backbone: keras.Model, boundary: str) -> tuple[keras.Model, keras.Model]:
    """(stem, tail) sharing the backbone's layers: stem ends at ``boundary``, tail starts there."""
    cut = backbone_layer(backbone, boundary).output
    stem = keras.Model(backbone.input, cut, name=f"{backbone.name}_stem")
    tail = keras.Model(cut, backbone.output, name=f"{backbone.name}_tail")
    return stem, tail


def stem_model(classifier: Classifier, boundary: str | None) -> keras.Model:
    """uint8 images -> resize -> preprocess -> backbone up to ``boundary`` (None: all)."""
    backbone = classifier.backbone
    inputs = keras.Input(classifier.model.input_shape[1:], dtype="uint8")
    x = layers.Rescaling(1.0)(inputs)
    for layer in (classifier.resize, classifier.preprocess):
        if layer is not None:
            x = layer(x)
    stem = backbone if boundary is None else split_backbone(backbone, boundary)[0]
    return keras.Model(inputs, stem(x, training=False), name="feature_stem")


# Converting a frozen part to an engine takes 5-25 s of CPU; Keras embeds 300-1,000 images/s
# at 96 px on a CPU, so below this many images to embed Keras is done first.
MIN_ENGINE_IMAGES = 10_000


# The frozen parts embed fp32 on ONNX Runtime first: at the block_12_add stem (96 px) it
# embedded 2.46x Keras's images/s against OpenVINO's 1.97x (OpenVINO stays the serving
# default for its int8, engines.DEFAULT_ENGINE; the stem never runs int8).
STEM_ENGINES = ("onnxruntime", "openvino")


def default_stem_engine() -> str:
    """The first of STEM_ENGINES whose package imports here, else ``tensorflow`` (Keras)."""
    return next((e for e in STEM_ENGINES if engine_available(e)), KERAS_ENGINE)


def choose_stem_engine(requested: str, backend: str, accelerated: bool, images: int) -> str:
    """The engine the frozen parts embed ``images`` on: a named one as named (``tensorflow``:
    the Keras model itself); ``auto``: the fast CPU engine (default_stem_engine) where Keras
    runs TensorFlow on a CPU and there are at least MIN_ENGINE_IMAGES, else Keras (the
    engines are CPU engines, exported through a TensorFlow SavedModel)."""
    if requested != "auto":
        return resolve_engine(requested)
    if backend != "tensorflow" or accelerated or images < MIN_ENGINE_IMAGES:
        return KERAS_ENGINE
    return default_stem_engine()


class FrozenPart:
    """A frozen part of the classifier (the stem, or the rest of the backbone to the pool)
    run on ``engine``. It is converted the first time it has images to embed, into
    ``workdir``: a run that finds its features cached converts nothing."""

    def __init__(self, model: keras.Model, engine: str, workdir: Path):
        self.model, self.engine, self.workdir = model, engine, workdir
        self.compiled: Predictor | None = None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one image's features."""
        return tuple(self.model.compute_output_shape((None, *input_shape))[1:])

    def predictor(self):
        """The part on its engine (``predict_on_batch``), converted on first use."""
        if self.compiled is None:
            start = time.perf_counter()
            self.compiled = compile_keras(self.model, self.engine, self.workdir)
            log.info(
                "%s on %s %s (converted in %.1f s)",
                self.model.name,
                self.engine,
                STEM_PRECISION,
                time.perf_counter() - start,
            )
        return self.compiled


class RowBatches(keras.utils.PyDataset):
    """Batches of rows read from (memory-mapped) arrays, so memory holds a batch whatever
    the data's size; labels one-hot encoded per batch. With a ``seed`` the rows are shuffled
    per epoch, each drawn from the original or (given ``mirrored``) its mirrored copy; the
    order depends on (seed, epoch) alone and :class:`EpochOrder` sets the epoch, so a resumed
    fit reads what an uninterrupted one would have. ``multiple_of`` trims each batch to a
    multiple of the replicas that split it (JAX shards a batch evenly or not at all)."""

    def __init__(
        self,
        rows,
        labels,
        n_classes: int,
        batch_size: int,
        seed: int | None = None,
        mirrored=None,
        multiple_of: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.rows, self.labels, self.mirrored = rows, labels, mirrored
        self.n_classes, self.batch_size, self.seed = n_classes, batch_size, seed
        self.multiple_of = multiple_of
        self.plan: tuple[np.ndarray, np.ndarray | None]
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw the order (and the mirrored rows) of ``epoch``."""
        count = len(self.labels)
        if self.seed is None:
            self.plan = (np.arange(count), None)
            return
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(count)
        flips = rng.random(count) < 0.5 if self.mirrored is not None else None
        self.plan = (order, flips)  # one assignment: a reader never sees half of each

    def __len__(self) -> int:
        full, rest = divmod(len(self.labels), self.batch_size)
        return full + (rest >= self.multiple_of)

    def __getitem__(self, index: int):
        order, flips = self.plan
        rows = order[index * self.batch_size : (index + 1) * self.batch_size]
        rows = np.sort(rows[: len(rows) - len(rows) % self.multiple_of])
        batch = np.asarray(self.rows[rows])
        if flips is not None:
            mirror = flips[rows]
            batch[mirror] = self.mirrored[rows[mirror]]
        labels = np.asarray(self.labels[rows])
        return batch, np.eye(self.n_classes, dtype="float32")[labels]


class EpochOrder(keras.callbacks.Callback):
    """Tells the training batches which epoch begins (see :class:`RowBatches`)."""

    def __init__(self, batches: RowBatches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self.batches.set_epoch(epoch)


def cached_activations(
    part: FrozenPart,
    images: np.ndarray,
    path: Path,
    batch_size: int,
    desc: str,
    mirror: bool = False,
) -> np.ndarray:
    """Activations of ``part`` over ``images``, computed once and memory-mapped from disk.
    They are written to the file batch by batch: memory holds one batch whatever the
    dataset's size or resolution."""
    if (cached := _readable(path, len(images))) is not None:
        return cached
    shape = (len(images), *part.output_shape(images.shape[1:]))
    with atomic_file(path) as partial:
        values = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=shape)
        try:
            predictor = part.predictor()
            start = time.perf_counter()
            predict_batches(predictor, images, batch_size, desc, out=values, mirror=mirror)
            seconds = time.perf_counter() - start
            log.info(
                "%s: %d images on %s in %.1f s (%.0f images/s)",
                desc,
                len(images),
                part.engine,
                seconds,
                len(images) / max(seconds, 1e-9),
            )
            values.flush()
        finally:
            del values
    return np.load(path, mmap_mode="r")


def _readable(path: Path, rows: int) -> np.ndarray | None:
    """The cached activations at ``path``, memory-mapped, if they are whole: float32, one row
    per image (a damaged or foreign file is computed again, never trusted)."""
    try:
        values = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    whole = values.dtype == np.float32 and values.ndim > 0 and len(values) == rows
    return values if whole else None


class RungFeatures(NamedTuple):
    """A cached rung's inputs: the features of the training images (and of their mirrored
    copies, for flip augmentation) and of the validation images (and of theirs, for flip
    TTA); a mirrored set is None where it was not asked for."""

    train: np.ndarray
    train_mirrored: np.ndarray | None
    validation: np.ndarray
    validation_mirrored: np.ndarray | None


def rung_features(
    classifier: Classifier,
    mode: RungMode,
    boundary: str | None,
    flip: bool,
    train_images: Rows,
    validation_images: Rows,
    cache_dir: Path,
    engine: str = "tensorflow",
    mirror_validation: bool = False,
) -> RungFeatures:
    """The inputs of a ``head`` or ``tail`` rung, the frozen parts run on ``engine`` (see
    :func:`choose_stem_engine`); ``flip``: with the training images' mirrored copies,
    ``mirror_validation``: with the validation images'."""
    with tempfile.TemporaryDirectory(prefix="frozen-engine-") as workdir:
        stem = FrozenPart(stem_model(classifier, boundary), engine, Path(workdir) / "stem")

        def activations(part, images, name, desc, mirror=False):
            return cached_activations(
                part, images, cache_dir / f"{name}.npy", EMBED_BATCH, desc, mirror
            )

        def embedded(images, split, mirror=False):
            if not mirror:
                return activations(stem, images, split, f"embed {split}")
            return activations(stem, images, f"{split}_flip", f"embed mirrored {split}", True)

        stems = RungFeatures(
            embedded(train_images, "train"),
            embedded(train_images, "train", mirror=True) if flip else None,
            embedded(validation_images, "validation"),
            embedded(validation_images, "validation", mirror=True) if mirror_validation else None,
        )
        if mode == "tail":
            return stems
        # Head-only: the frozen rest of the backbone (if any) runs once more, to pooled
        # features.
        pool = FrozenPart(
            pool_model(classifier, boundary, stems.train.shape[1:]), engine, Path(workdir) / "pool"
        )

        def pooled(source, name):
            return activations(pool, source, f"pooled_{name}", f"pool {name}")

        def pooled_mirror(source, name):
            return None if source is None else pooled(source, name)

        return RungFeatures(
            pooled(stems.train, "train"),
            pooled_mirror(stems.train_mirrored, "train_flip"),
            pooled(stems.validation, "validation"),
            pooled_mirror(stems.validation_mirrored, "validation_flip"),
        )


def pool_model(classifier: Classifier, boundary: str | None, shape) -> keras.Model:
    """Features at ``boundary`` (None: the backbone's output) -> the rest of the backbone ->
    the head's pooling (layers shared, not copied)."""
    rest = [split_backbone(classifier.backbone, boundary)[1]] if boundary else []
    return keras.Sequential([keras.Input(shape), *rest, classifier.pool], name="feature_pool")


def trainable_part(
    classifier: Classifier, mode: RungMode, boundary: str | None, shape
) -> keras.Model:
    """The part of the classifier that trains on cached features (layers shared, not copied)."""
    inputs = keras.Input(shape)
    if mode == "head":
        x = classifier.dropout(inputs)
        return keras.Model(inputs, classifier.softmax(x), name="head_on_features")
    if boundary is None:
        raise ConfigError("a tail rung trains on cached features: it needs train.cache_boundary")
    _, tail = split_backbone(classifier.backbone, boundary)
    return keras.Model(
        inputs, classifier.head(tail(inputs, training=False)), name="tail_on_features"
    )
