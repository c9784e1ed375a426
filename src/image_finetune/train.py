"""One training attempt: one rung of the ladder in params.yaml.

A rung trains in one of three modes:

- ``head``: backbone frozen; the head trains on pooled backbone features that
  are computed once (seconds per epoch on a CPU);
- ``tail``: the backbone is cut at ``train.cache_boundary``; activations up to
  the cut are cached once and the layers after it train on them;
- ``end_to_end``: the whole classifier, with the full augmentation policy.

Caches are keyed by everything that determines them, so later rungs and re-runs
reuse them. Every epoch is checkpointed; an interrupted attempt resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from image_finetune.augment import build_augmentation
from image_finetune.config import Params, Rung
from image_finetune.data.canonical import load_split, manifest_digest, read_manifest, sha256_file
from image_finetune.errors import MissingInputError, PipelineError
from image_finetune.model import (
    build_backbone,
    build_classifier,
    get_backbone,
    get_head,
    layer_index,
    resolve_weights,
    set_trainable,
    split_backbone,
    stem_model,
    unfreeze_index,
)

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"


class TrainingError(PipelineError):
    """Training diverged or could not run."""

    exit_code = 8


@dataclass
class AttemptResult:
    """What one rung produced."""

    index: int
    rung: str
    mode: str
    model_path: str
    epochs_run: int
    best_val_accuracy: float
    train_seconds: float
    embed_seconds: float
    images_per_second: float
    trainable_params: int
    backend: str
    mixed_precision: bool


def accelerator_available() -> bool:
    """Whether the current Keras backend sees a GPU."""
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


def configure_runtime(params: Params) -> bool:
    """Seed everything, make CPU runs deterministic, choose the precision; return mixed?"""
    keras.utils.set_random_seed(params.train.seed)
    gpu = accelerator_available()
    if keras.config.backend() == "tensorflow" and not gpu:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    mixed = params.train.mixed_precision == "on" or (
        params.train.mixed_precision == "auto" and gpu
    )
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if mixed else "float32")
    return mixed


def rung_image_size(params: Params, rung: Rung) -> int:
    """The backbone resolution for a rung (the rung's own, else the model's)."""
    return rung.image_size or params.model.image_size


def choose_mode(params: Params, rung: Rung, backbone: keras.Model) -> str:
    """head, tail or end_to_end (see the module docstring)."""
    if not params.train.cache_features:
        return "end_to_end"
    if rung.unfreeze_from is None:
        return "head"
    boundary = params.train.cache_boundary
    if boundary and unfreeze_index(backbone, rung.unfreeze_from) > layer_index(backbone, boundary):
        return "tail"
    return "end_to_end"


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_fingerprint() -> str:
    """Hash of the modules that shape models and features: caches die with a code change."""
    from image_finetune import augment, model

    return _digest(*(Path(m.__file__).read_text() for m in (model, augment, sys.modules[__name__])))


def weights_fingerprint(params: Params, weights_path: Path | None) -> str:
    """What identifies the pretrained weights: the file's hash, or imagenet/none."""
    return sha256_file(weights_path) if weights_path else params.model.weights.lower()


class CachedFeatures(keras.utils.PyDataset):
    """Batches of cached features; each sample drawn from its original or mirrored copy."""

    def __init__(self, features, flipped, labels, batch_size: int, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.features, self.flipped, self.labels = features, flipped, labels
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self._shuffle()

    def _shuffle(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.order = rng.permutation(len(self.labels))
        self.use_flip = rng.random(len(self.labels)) < 0.5 if self.flipped is not None else None

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int):
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        batch = np.asarray(self.features[rows])
        if self.use_flip is not None:
            mirror = self.use_flip[rows]
            batch[mirror] = self.flipped[rows[mirror]]
        return batch, self.labels[rows]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._shuffle()


def embed(model: keras.Model, images: np.ndarray, batch_size: int, desc: str) -> np.ndarray:
    """Run ``model`` over uint8 images in batches with a progress bar; float32 out."""
    from tqdm import tqdm

    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch",
                      mininterval=2.0, file=sys.stderr):
        batch = np.asarray(images[start : start + batch_size])
        chunks.append(np.asarray(model.predict_on_batch(batch), dtype=np.float32))
    return np.concatenate(chunks)


def cached_activations(
    stem: keras.Model, images: np.ndarray, path: Path, batch_size: int, desc: str
) -> np.ndarray:
    """Activations of ``stem`` over ``images``, computed once and memory-mapped from disk."""
    if path.exists():
        return np.load(path, mmap_mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    values = embed(stem, images, batch_size, desc)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, values)
    partial.rename(path)  # a killed embedding never leaves a truncated cache behind
    return np.load(path, mmap_mode="r")


def _one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype="float32")[np.asarray(labels)]


def _schedule(rung: Rung, steps_per_epoch: int):
    total = max(1, rung.epochs * steps_per_epoch)
    warmup = int(rung.warmup_epochs * steps_per_epoch)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            rung.learning_rate * 0.1, max(1, total - warmup), alpha=0.01,
            warmup_target=rung.learning_rate, warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(rung.learning_rate, total, alpha=0.01)


def load_classifier(path: Path) -> keras.Model:
    """Load a saved classifier, with a clear error where it is missing."""
    if not Path(path).exists():
        raise MissingInputError(f"{path}: model not found (run the train step first)")
    return keras.saving.load_model(path, compile=False)


def build_rung_classifier(
    params: Params, rung: Rung, n_classes: int, root: Path, warm_start: Path | None
) -> keras.Model:
    """The classifier for a rung, warm-started from the previous rung's model if given."""
    weights_path = resolve_weights(params.model, root)
    backbone = build_backbone(params.model, rung_image_size(params, rung), weights_path)
    classifier = build_classifier(
        backbone, n_classes, params.model, read_input_size(params),
        build_augmentation(params.augment, params.train.seed),
    )
    if warm_start is not None:
        previous = load_classifier(warm_start)
        # Convolution weights do not depend on the resolution, so a warm start
        # works across rungs that change image_size.
        get_backbone(classifier).set_weights(get_backbone(previous).get_weights())
        get_head(classifier).set_weights(get_head(previous).get_weights())
        log.info("warm start from %s", warm_start)
    return classifier


def read_input_size(params: Params) -> int:
    """The dataset's image side length (classifier input)."""
    return params.data.image_size


def train_rung(
    params: Params,
    index: int,
    data_dir: Path,
    out_dir: Path,
    root: Path,
    cache_root: Path,
    warm_start: Path | None = None,
) -> AttemptResult:
    """Train rung ``index``; write ``model.keras``, ``history.csv`` and ``result.json``."""
    rung = params.train.ladder[index]
    mixed = configure_runtime(params)
    manifest = read_manifest(data_dir)
    weights_path = resolve_weights(params.model, root)
    image_size = rung_image_size(params, rung)
    cache_key = _digest(params.model.backbone, weights_fingerprint(params, weights_path),
                        image_size, params.train.cache_boundary, manifest_digest(data_dir),
                        keras.config.backend(), code_fingerprint())
    attempt_key = _digest(cache_key, rung.model_dump(mode="json"), params.model.dropout,
                          params.augment.model_dump(mode="json"), params.train.seed,
                          params.train.cache_features, params.train.flip_cache,
                          sha256_file(warm_start) if warm_start else None)
    cache_dir = cache_root / "features" / cache_key
    finished = cache_root / "attempts" / attempt_key
    if (finished / "result.json").exists():
        log.info("rung %d %r: reusing the finished attempt %s", index, rung.name, finished)
        shutil.copytree(finished, out_dir, dirs_exist_ok=True)
        result = json.loads((out_dir / "result.json").read_text())
        return AttemptResult(**{**result, "model_path": str(out_dir / MODEL_FILE)})
    n_classes = len(manifest["class_names"])
    train, validation = load_split(data_dir, "train"), load_split(data_dir, "validation")
    classifier = build_rung_classifier(params, rung, n_classes, root, warm_start)
    backbone, head = get_backbone(classifier), get_head(classifier)
    mode = choose_mode(params, rung, backbone)
    trainable = set_trainable(backbone, rung.unfreeze_from) if mode != "head" else 0
    if mode == "head":
        set_trainable(backbone, None)

    embed_start = time.perf_counter()
    y_train = _one_hot(train.labels, n_classes)
    y_val = _one_hot(validation.labels, n_classes)
    batch = rung.batch_size
    if mode == "end_to_end":
        fit_model, x_train, x_val = classifier, train.images, np.asarray(validation.images)
        fit_data = None
    else:
        features = _features(params, classifier, mode, train, validation, cache_dir)
        x_train, x_flip, x_val = features
        fit_model = _cached_model(classifier, mode, params, x_train.shape[1:])
        fit_data = CachedFeatures(x_train, x_flip, y_train, batch, params.train.seed)
    embed_seconds = time.perf_counter() - embed_start
    trainable += sum(int(np.prod(w.shape)) for w in head.trainable_weights)

    steps = math.ceil(len(y_train) / batch)
    fit_model.compile(
        optimizer=keras.optimizers.AdamW(_schedule(rung, steps), weight_decay=rung.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=rung.label_smoothing),
        metrics=["accuracy"],
        jit_compile={"auto": "auto", "on": True, "off": False}[params.train.jit_compile],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = cache_root / "checkpoints" / attempt_key
    resuming = (checkpoints / "training_metadata.json").exists()
    # Kept beside the checkpoint (outside DVC's outputs) so a resumed run keeps earlier epochs.
    history_log = checkpoints.with_name(f"{attempt_key}.history.csv")
    history_log.parent.mkdir(parents=True, exist_ok=True)
    if resuming:
        log.info("rung %d %r: resuming from the checkpoint in %s", index, rung.name, checkpoints)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(checkpoints)),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(history_log), append=resuming),
    ]
    if rung.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_accuracy", patience=rung.early_stopping_patience,
            restore_best_weights=True))
    log.info("rung %d %r: mode=%s image_size=%d trainable=%d epochs=%d backend=%s mixed=%s",
             index, rung.name, mode, image_size, trainable, rung.epochs,
             keras.config.backend(), mixed)
    start = time.perf_counter()
    verbose = 1 if sys.stderr.isatty() else 2
    if fit_data is None:
        history = fit_model.fit(x_train, y_train, batch_size=batch, epochs=rung.epochs,
                                validation_data=(x_val, y_val), callbacks=callbacks,
                                shuffle=True, verbose=verbose)
    else:
        history = fit_model.fit(fit_data, epochs=rung.epochs, validation_data=(x_val, y_val),
                                callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - start
    losses = history.history.get("loss", [])
    if any(not math.isfinite(v) for v in losses):
        raise TrainingError(f"rung {index} {rung.name!r}: loss diverged ({losses})")
    model_path = out_dir / MODEL_FILE
    classifier.save(model_path)
    shutil.move(history_log, out_dir / "history.csv")
    epochs_run = len(losses)
    result = AttemptResult(
        index=index, rung=rung.name, mode=mode, model_path=str(model_path),
        epochs_run=epochs_run,
        best_val_accuracy=float(max(history.history.get("val_accuracy", [float("nan")]))),
        train_seconds=round(seconds, 2), embed_seconds=round(embed_seconds, 2),
        images_per_second=round(epochs_run * len(y_train) / max(seconds, 1e-9), 1),
        trainable_params=int(trainable), backend=keras.config.backend(), mixed_precision=mixed,
    )
    (out_dir / "result.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    shutil.copytree(out_dir, finished.with_suffix(".partial"), dirs_exist_ok=True)
    finished.with_suffix(".partial").rename(finished)
    return result


def _features(params, classifier, mode, train, validation, cache_dir: Path):
    """(train, train mirrored or None, validation) inputs for a cached-feature rung."""
    boundary = params.train.cache_boundary
    stem = stem_model(classifier, boundary)
    batch = 256
    flip = params.train.flip_cache and params.augment.horizontal_flip
    x_train = cached_activations(stem, train.images, cache_dir / "train.npy", batch, "embed train")
    x_flip = (cached_activations(stem, np.asarray(train.images)[:, :, ::-1], cache_dir /
                                 "train_flip.npy", batch, "embed mirrored train")
              if flip else None)
    x_val = cached_activations(stem, validation.images, cache_dir / "validation.npy", batch,
                               "embed validation")
    if mode == "tail":
        return x_train, x_flip, np.asarray(x_val)
    # Head-only: the frozen rest of the backbone (if any) runs once more, to pooled features.
    rest = [split_backbone(get_backbone(classifier), boundary)[1]] if boundary else []
    pool = keras.Sequential([*rest, get_head(classifier).get_layer("pool")])

    def pooled(source, name):
        if source is None:
            return None
        return cached_activations(pool, source, cache_dir / f"pooled_{name}.npy", batch,
                                  f"pool {name}")

    return pooled(x_train, "train"), pooled(x_flip, "train_flip"), np.asarray(
        pooled(x_val, "validation"))


def _cached_model(classifier: keras.Model, mode: str, params: Params, shape) -> keras.Model:
    """The trainable part of the classifier, fed from the cache (layers shared, not copied)."""
    head = get_head(classifier)
    inputs = keras.Input(shape)
    if mode == "head":
        x = head.get_layer("dropout")(inputs)
        return keras.Model(inputs, head.get_layer("logits")(x), name="head_on_features")
    _, tail = split_backbone(get_backbone(classifier), params.train.cache_boundary)
    return keras.Model(inputs, head(tail(inputs, training=False)), name="tail_on_features")

