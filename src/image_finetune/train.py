"""One training attempt: one rung of the ladder in params.yaml.

A rung trains in one of three modes:

- ``head``: backbone frozen; the head trains on pooled backbone features that
  are computed once (seconds per epoch on a CPU);
- ``tail``: the backbone is cut at ``train.cache_boundary``; activations up to
  the cut are cached once and the layers after it train on them;
- ``end_to_end``: the whole classifier, with the full augmentation policy.

Every epoch is checkpointed; an interrupted attempt resumes (see :class:`TrainingPaths`).
Every mode trains data-parallel where ``train.distribution`` asks (see
:mod:`image_finetune.distribute`): the model is built and fit in the strategy's scope, the
batches are read row by row from memory-mapped files, and only the chief writes.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from image_finetune.augment import build_augmentation
from image_finetune.codegraph import source_digest
from image_finetune.config import Params, Rung
from image_finetune.data.canonical import Split, sha256_file
from image_finetune.distribute import ONE_DEVICE, Replicas, start_replicas
from image_finetune.errors import TrainingError
from image_finetune.features import (
    STEM_PRECISION,
    EpochOrder,
    RowBatches,
    cache_key,
    choose_stem_engine,
    rung_features,
    trainable_part,
)
from image_finetune.inference import load_classifier
from image_finetune.model import (
    build_backbone,
    build_classifier,
    get_backbone,
    get_head,
    layer_index,
    set_trainable,
    unfreeze_index,
)

log = logging.getLogger(__name__)


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
    distribution: str = "one_device x1"
    global_batch: int = 0


@dataclass(frozen=True)
class TrainingPaths:
    """Where an attempt keeps its scratch: the feature cache of its backbone, resolution
    and data, and its own checkpoint folder and epoch log (kept outside the step's outputs
    so that a resumed run keeps its earlier epochs)."""

    features: Path
    checkpoints: Path

    @property
    def history(self) -> Path:
        """The epoch log beside the checkpoints."""
        return self.checkpoints.with_name(f"{self.checkpoints.name}.history.csv")


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


def configure_runtime(params: Params) -> tuple[bool, Replicas]:
    """Choose the devices (first: they are fixed once the backend's runtime starts), seed
    everything, make CPU runs deterministic, choose the precision; return (mixed, replicas)."""
    replicas = start_replicas(params.train)
    keras.utils.set_random_seed(params.train.seed)
    gpu = accelerator_available()
    if keras.config.backend() == "tensorflow" and not gpu:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    mixed = params.train.mixed_precision == "on" or (
        params.train.mixed_precision == "auto" and gpu
    )
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if mixed else "float32")
    return mixed, replicas


def rung_image_size(params: Params, rung: Rung) -> int:
    """The backbone resolution for a rung (the rung's own, else the model's)."""
    return rung.image_size or params.model.image_size


# The code that shapes the feature cache: this module builds the classifier and embeds
# through features/model/inference/engines. Its whole import closure is hashed (codegraph),
# never a hand-kept list; an attempt adds the closure of the step that runs it.
FEATURE_CODE = (__name__,)


def code_fingerprint(modules: tuple[str, ...] = FEATURE_CODE) -> str:
    """Hash of the source of ``modules`` and everything they import: caches die with a
    change to any module that shaped them."""
    return cache_key(source_digest(*modules))


def mirrors_cached(params: Params) -> bool:
    """Whether the feature cache holds mirrored copies of the training images too."""
    return params.train.flip_cache and params.augment.horizontal_flip


def stem_engine(params: Params, train_size: int, validation_size: int) -> str:
    """The engine a rung's frozen parts embed on (features.choose_stem_engine), given the
    sizes of the splits they embed."""
    images = train_size * (2 if mirrors_cached(params) else 1) + validation_size
    return choose_stem_engine(params.train.stem_engine, keras.config.backend(),
                              accelerator_available(), images)


def weights_fingerprint(params: Params, weights_path: Path | None) -> str:
    """What identifies the pretrained weights: the file's hash, or imagenet/none."""
    return sha256_file(weights_path) if weights_path else params.model.weights.lower()


def attempt_keys(
    params: Params, index: int, weights_path: Path | None, data_digest: str,
    warm_start: Path | None, replicas: Replicas | None = None, step: str | None = None, *,
    engine: str,
) -> tuple[str, str]:
    """(feature cache key, attempt key): what determines the cache and the attempt. ``step``:
    the module that runs the attempt (it adapts the rung: its code shapes the attempt too);
    ``engine``: the one the frozen parts embed on (:func:`stem_engine`)."""
    rung = params.train.ladder[index]
    features = cache_key(params.model.backbone, weights_fingerprint(params, weights_path),
                         rung_image_size(params, rung), params.train.cache_boundary,
                         data_digest, keras.config.backend(), code_fingerprint(),
                         engine, STEM_PRECISION)
    attempt_code = FEATURE_CODE + ((step,) if step else ())
    attempt = cache_key(features, code_fingerprint(attempt_code),
                        rung.model_dump(mode="json"), params.model.dropout,
                        params.augment.model_dump(mode="json"), params.train.seed,
                        params.train.cache_features, params.train.flip_cache,
                        sha256_file(warm_start) if warm_start else None,
                        replicas.layout if replicas and replicas.count > 1 else None,
                        params.train.batch_scaling)
    return features, attempt


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


def build_rung_classifier(
    params: Params, rung: Rung, n_classes: int, input_size: int, weights_path: Path | None,
    warm_start: Path | None,
) -> keras.Model:
    """The classifier for a rung, warm-started from the previous rung's model if given."""
    backbone = build_backbone(params.model, rung_image_size(params, rung), weights_path)
    classifier = build_classifier(
        backbone, n_classes, params.model, input_size,
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


MIN_STEPS_PER_EPOCH = 8
SOLVER_MAX_IMAGES = 20_000
SOLVER_STRENGTHS = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strengths tried, chosen on validation


def adapt_rung(rung: Rung, train_size: int) -> Rung:
    """The rung fitted to the data's size: the batch capped so that an epoch takes at least
    MIN_STEPS_PER_EPOCH steps, the epochs raised until the rung takes ``min_steps``
    optimizer steps. CIFAR-10's rungs are unchanged; 180 images get a batch of 23 and
    38 epochs instead of 8 single-step epochs."""
    if rung.min_steps <= 1:  # not asked for: the rung as written
        return rung
    batch = max(1, min(rung.batch_size, math.ceil(train_size / MIN_STEPS_PER_EPOCH)))
    epochs = max(rung.epochs, math.ceil(rung.min_steps / math.ceil(train_size / batch)))
    return rung.model_copy(update={"batch_size": batch, "epochs": epochs})


def uses_solver(rung: Rung, mode: str, train_size: int) -> bool:
    """Whether a head rung is solved by L-BFGS rather than stepped by Adam."""
    if mode != "head" or rung.head_solver == "adam":
        return False
    return rung.head_solver == "lbfgs" or train_size <= SOLVER_MAX_IMAGES


def _schedule(rung: Rung, steps_per_epoch: int):
    total = max(1, rung.epochs * steps_per_epoch)
    warmup = int(rung.warmup_epochs * steps_per_epoch)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            rung.learning_rate * 0.1, max(1, total - warmup), alpha=0.01,
            warmup_target=rung.learning_rate, warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(rung.learning_rate, total, alpha=0.01)


def compile_for_rung(params: Params, rung: Rung, model: keras.Model, steps_per_epoch: int) -> None:
    """Compile ``model`` with the rung's optimizer, schedule, loss and metrics."""
    model.compile(
        optimizer=keras.optimizers.AdamW(_schedule(rung, steps_per_epoch),
                                         weight_decay=rung.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=rung.label_smoothing),
        metrics=["accuracy"],
        jit_compile={"auto": "auto", "on": True, "off": False}[params.train.jit_compile],
    )


@dataclass
class FitPlan:
    """What one rung fits: the model, its training and validation batches."""

    mode: str
    model: keras.Model
    train: RowBatches  # cached features (with their mirrored copies) or the images
    validation: RowBatches
    trainable_params: int
    embed_seconds: float


def plan_fit(
    params: Params, rung: Rung, classifier: keras.Model, train: Split, validation: Split,
    n_classes: int, feature_dir: Path, replicas: Replicas | None = None, *, engine: str,
) -> FitPlan:
    """Freeze what the rung keeps frozen and prepare its inputs (caching features first, the
    frozen parts on ``engine``, outside the strategy's scope: every worker embeds on its
    own)."""
    replicas = replicas or ONE_DEVICE
    backbone, head = get_backbone(classifier), get_head(classifier)
    mode = choose_mode(params, rung, backbone)
    trainable = set_trainable(backbone, rung.unfreeze_from) if mode != "head" else 0
    if mode == "head":
        set_trainable(backbone, None)
    start = time.perf_counter()
    seed, even = params.train.seed, replicas.count if keras.config.backend() == "jax" else 1
    if mode == "end_to_end":
        model, x_train, mirrored, x_val = classifier, train.images, None, validation.images
    else:
        boundary = params.train.cache_boundary
        x_train, mirrored, x_val = rung_features(classifier, mode, boundary,
                                                 mirrors_cached(params), train.images,
                                                 validation.images, feature_dir, engine)
        with replicas.scope():
            model = trainable_part(classifier, mode, boundary, x_train.shape[1:])
    batches = RowBatches(x_train, train.labels, n_classes, rung.batch_size, seed, mirrored, even)
    held_out = RowBatches(x_val, validation.labels, n_classes, rung.batch_size, multiple_of=even)
    trainable += sum(int(np.prod(w.shape)) for w in head.trainable_weights)
    return FitPlan(mode, model, batches, held_out, trainable, time.perf_counter() - start)


def _callbacks(rung: Rung, plan: FitPlan, paths: TrainingPaths, resuming: bool,
               chief: bool) -> list:
    callbacks = [EpochOrder(plan.train), keras.callbacks.TerminateOnNaN()]
    if chief:
        # The epoch's row is logged before its checkpoint: a kill in between re-runs the
        # epoch, and prepare_resume drops the row it would otherwise repeat.
        callbacks += [
            keras.callbacks.CSVLogger(str(paths.history), append=resuming),
            keras.callbacks.BackupAndRestore(str(paths.checkpoints), double_checkpoint=True)]
    else:  # saving takes every worker (its reads are collective): the others save aside
        callbacks += [RestoreOnly(str(paths.checkpoints), delete_checkpoint=False),
                      keras.callbacks.BackupAndRestore(tempfile.mkdtemp(prefix="checkpoint-"))]
    if rung.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_accuracy", patience=rung.early_stopping_patience,
            restore_best_weights=True))
    return callbacks


class RestoreOnly(keras.callbacks.BackupAndRestore):
    """A worker's view of the chief's checkpoint: it resumes from it and never writes it."""

    def on_epoch_end(self, epoch, logs=None) -> None:
        """The chief alone saves."""

    def on_train_batch_end(self, batch, logs=None) -> None:
        """The chief alone saves."""


CHECKPOINT = ("latest.weights.h5", "training_metadata.json")
PREVIOUS = tuple(f"{name}.bkp" for name in CHECKPOINT)


def _checkpoint_epoch(folder: Path, names: tuple[str, str]) -> int | None:
    """The epochs a checkpoint pair has completed, or None where it is missing or corrupt."""
    import h5py

    weights, metadata = (folder / name for name in names)
    try:
        epoch = int(json.loads(metadata.read_text())["epoch"])
        with h5py.File(weights, "r") as handle:  # reads every tensor: truncation shows
            handle.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset)
                              else None)
        return epoch
    except (OSError, ValueError, KeyError, TypeError):
        return None


def prepare_resume(paths: TrainingPaths) -> int | None:
    """Make an interrupted attempt resumable; return the epoch it resumes at (None: fresh).

    A corrupt latest checkpoint gives way to the previous one; when neither loads, the
    folder is set aside with a warning and the attempt starts afresh. The epoch log keeps
    only the epochs the checkpoint holds."""
    folder = paths.checkpoints
    if not folder.exists():
        return None
    epoch = _checkpoint_epoch(folder, CHECKPOINT)
    if epoch is None and (epoch := _checkpoint_epoch(folder, PREVIOUS)) is not None:
        log.warning("the latest checkpoint in %s is corrupt; resuming from the one before it "
                    "(epoch %d)", folder, epoch)
        for previous, latest in zip(PREVIOUS, CHECKPOINT, strict=True):
            shutil.copyfile(folder / previous, folder / latest)
    if epoch is None:
        aside = folder.with_name(f"{folder.name}.corrupt-{uuid.uuid4().hex[:8]}")
        folder.rename(aside)
        paths.history.unlink(missing_ok=True)
        log.warning("no readable checkpoint in %s (set aside as %s): the attempt starts afresh",
                    folder, aside)
        return None
    _keep_epochs(paths.history, epoch)
    return epoch


def _keep_epochs(history: Path, epochs: int) -> None:
    if not history.exists():
        return
    lines = history.read_text().splitlines(keepends=True)
    kept = [line for line in lines[1:] if line.split(",", 1)[0].isdigit()
            and int(line.split(",", 1)[0]) < epochs]
    history.write_text("".join(lines[:1] + kept))


def fit_plan(
    params: Params, index: int, plan: FitPlan, paths: TrainingPaths,
    observers: Sequence[keras.callbacks.Callback] = (), replicas: Replicas | None = None,
) -> dict:
    """Compile and fit in the strategy's scope; resume from the attempt's checkpoint if there
    is one (the chief makes it resumable, then every worker reads it).

    ``observers`` are extra callbacks (a benchmark's clock, say) run after the rung's own.
    Returns the Keras history (per-epoch figures); raises TrainingError on divergence.
    """
    replicas = replicas or ONE_DEVICE
    rung = params.train.ladder[index]
    if uses_solver(rung, plan.mode, len(plan.train.labels)):
        return solve_head(plan, paths, write_log=replicas.is_chief)
    model = replicas.fitting_model(plan.model)
    with replicas.scope():
        compile_for_rung(params, rung, model, len(plan.train))
    resumed_at = prepare_resume(paths) if replicas.is_chief else None
    replicas.barrier()  # the chief may mend a corrupt checkpoint first; then all read it
    if not replicas.is_chief:
        resumed_at = _checkpoint_epoch(paths.checkpoints, CHECKPOINT)
    resuming = resumed_at is not None
    paths.history.parent.mkdir(parents=True, exist_ok=True)
    if resuming:
        log.info("rung %d %r: resuming from the checkpoint in %s (epoch %d done)", index,
                 rung.name, paths.checkpoints, resumed_at)
    verbose = 1 if sys.stderr.isatty() else 2
    callbacks = [*_callbacks(rung, plan, paths, resuming, replicas.is_chief), *observers]
    with replicas.scope():
        # The batches shuffle themselves by (seed, epoch); Keras's own shuffle of their order
        # would draw from a generator that the strategy's first look at the data advances.
        history = model.fit(plan.train, validation_data=plan.validation, epochs=rung.epochs,
                            callbacks=callbacks, verbose=verbose, shuffle=False)
    logs = {name: [float(np.ravel(v)[0]) for v in values]
            for name, values in history.history.items()}
    losses = logs.get("loss", [])
    if any(not math.isfinite(v) for v in losses):
        raise TrainingError(f"rung {index} {rung.name!r}: loss diverged ({losses})")
    return logs


def solve_head(plan: FitPlan, paths: TrainingPaths, write_log: bool = True) -> dict:
    """Fit the head's softmax layer to convergence on the cached pooled features (and their
    mirrored copies): multinomial logistic regression by L-BFGS, a convex problem that small
    data solves in seconds, its L2 strength chosen on validation. Writes the epoch log's one
    row; returns the history as fit would."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    cached, held_out = plan.train, plan.validation
    x = np.concatenate([np.asarray(cached.rows)]
                       + ([np.asarray(cached.mirrored)] if cached.mirrored is not None else []))
    y = np.tile(np.asarray(cached.labels), len(x) // len(cached.labels))
    x_val, y_val = np.asarray(held_out.rows), np.asarray(held_out.labels)
    fits = [LogisticRegression(C=c, max_iter=2000).fit(x, y) for c in SOLVER_STRENGTHS]
    best = max(fits, key=lambda fit: fit.score(x_val, y_val))
    n_classes = held_out.n_classes
    kernel = np.zeros((x.shape[1], n_classes), "float32")
    bias = np.zeros(n_classes, "float32")
    if n_classes == 2:  # scikit-learn keeps one row for two classes: class 1 against 0
        kernel[:, 1], bias[1] = best.coef_[0], best.intercept_[0]
    else:
        kernel[:, best.classes_], bias[best.classes_] = best.coef_.T, best.intercept_
    plan.model.get_layer("logits").set_weights([kernel, bias])
    history = {"accuracy": [best.score(x, y)], "loss": [log_loss(y, best.predict_proba(x))],
               "val_accuracy": [best.score(x_val, y_val)],
               "val_loss": [log_loss(y_val, best.predict_proba(x_val), labels=best.classes_)]}
    if write_log:
        paths.history.parent.mkdir(parents=True, exist_ok=True)
        paths.history.write_text("epoch," + ",".join(history) + "\n0,"
                                 + ",".join(f"{v[0]:.6g}" for v in history.values()) + "\n")
    log.info("head solved by L-BFGS (C=%g, chosen on validation): train %.4f, validation %.4f",
             best.C, history["accuracy"][0], history["val_accuracy"][0])
    return history
