"""Fitting one rung of the ladder, by its plan (:mod:`image_finetune.training.plan`).

A rung trains in one of three modes (:data:`image_finetune.config.RungMode`):

- ``head``: backbone frozen; the head trains on pooled backbone features that
  are computed once (seconds per epoch on a CPU);
- ``tail``: the backbone is cut at ``train.cache_boundary``; activations up to
  the cut are cached once and the layers after it train on them;
- ``end_to_end``: the whole classifier, with the full augmentation policy.

Every epoch is checkpointed; an interrupted attempt resumes (see
:mod:`image_finetune.training.checkpoints`). Every mode trains data-parallel where
``train.distribution`` asks (see :mod:`image_finetune.training.distribute`): the model is built
and fit in the strategy's scope, the batches are read row by row from memory-mapped files, and
only the chief writes.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from image_finetune.config import Rung, RungMode
from image_finetune.data.canonical import Split
from image_finetune.errors import TrainingError
from image_finetune.inference import load_classifier, predict_batches
from image_finetune.training.augment import build_augmentation
from image_finetune.training.checkpoints import (
    CHECKPOINT,
    TrainingPaths,
    checkpoint_callbacks,
    checkpoint_epoch,
    prepare_resume,
)
from image_finetune.training.distribute import ONE_DEVICE, Replicas
from image_finetune.training.features import (
    EMBED_BATCH,
    EpochOrder,
    RowBatches,
    rung_features,
    trainable_part,
)
from image_finetune.training.head_solver import solve_head, uses_solver
from image_finetune.training.model import (
    Classifier,
    build_backbone,
    build_classifier,
    classifier_parts,
    layer_index,
    set_trainable,
    unfreeze_index,
)
from image_finetune.training.plan import RungPlan

log = logging.getLogger(__name__)


@dataclass
class AttemptResult:
    """What one rung produced."""

    index: int
    rung: str
    mode: RungMode
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


def choose_mode(plan: RungPlan, backbone: keras.Model) -> RungMode:
    """head, tail or end_to_end (see the module docstring)."""
    if not plan.cache_features:
        return "end_to_end"
    if plan.rung.unfreeze_from is None:
        return "head"
    boundary = plan.cache_boundary
    if boundary and (
        unfreeze_index(backbone, plan.rung.unfreeze_from) > layer_index(backbone, boundary)
    ):
        return "tail"
    return "end_to_end"


def build_rung_classifier(
    plan: RungPlan,
    n_classes: int,
    input_size: int,
    weights_path: Path | None,
    warm_start: Path | None,
) -> Classifier:
    """The classifier for a rung, warm-started from the previous rung's model if given."""
    backbone = build_backbone(plan.model, plan.image_size, weights_path)
    classifier = build_classifier(
        backbone,
        n_classes,
        plan.model,
        input_size,
        build_augmentation(plan.augment, plan.seed),
    )
    if warm_start is not None:
        previous = classifier_parts(load_classifier(warm_start))
        # Convolution weights do not depend on the resolution, so a warm start
        # works across rungs that change image_size.
        classifier.backbone.set_weights(previous.backbone.get_weights())
        classifier.head.set_weights(previous.head.get_weights())
        log.info("warm start from %s", warm_start)
    return classifier


def _schedule(rung: Rung, steps_per_epoch: int):
    total = max(1, rung.epochs * steps_per_epoch)
    warmup = int(rung.warmup_epochs * steps_per_epoch)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            rung.learning_rate * 0.1,
            max(1, total - warmup),
            alpha=0.01,
            warmup_target=rung.learning_rate,
            warmup_steps=warmup,
        )
    return keras.optimizers.schedules.CosineDecay(rung.learning_rate, total, alpha=0.01)


# Steps run per call into the backend on one device: a head rung's step is a few
# milliseconds, about as long as Keras's per-call overhead (8 halves that; the weights are
# the same bit for bit). TensorFlow's distribution strategies fail on multi-step calls over
# these batches and PyTorch refuses them, so there a call runs one step.
STEPS_PER_EXECUTION = 8


def steps_per_execution(replicas: int) -> int:
    """How many steps one call into the backend runs (see STEPS_PER_EXECUTION)."""
    return STEPS_PER_EXECUTION if replicas == 1 and keras.config.backend() != "torch" else 1


def compile_for_rung(
    rung: Rung,
    jit_compile: str,
    model: keras.Model,
    steps_per_epoch: int,
    steps_per_execution: int = 1,
) -> None:
    """Compile ``model`` with the rung's optimizer, schedule, loss and metrics
    (``jit_compile``: ``train.jit_compile``)."""
    model.compile(
        optimizer=keras.optimizers.AdamW(
            _schedule(rung, steps_per_epoch), weight_decay=rung.weight_decay
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=rung.label_smoothing),
        metrics=["accuracy"],
        jit_compile={"auto": "auto", "on": True, "off": False}[jit_compile],
        steps_per_execution=steps_per_execution,
    )


@dataclass
class FitInputs:
    """What one rung fits: the model, its training and validation batches."""

    mode: RungMode
    model: keras.Model
    train: RowBatches  # cached features (with their mirrored copies) or the images
    validation: RowBatches
    trainable_params: int
    embed_seconds: float
    softmax: keras.Layer  # the classifier's softmax layer (shared with ``model``)
    # the mirrored validation images' cached features (flip TTA); None: trained on images
    validation_mirrored: np.ndarray | None = None


def prepare_fit(
    plan: RungPlan,
    classifier: Classifier,
    train: Split,
    validation: Split,
    n_classes: int,
    feature_dir: Path,
    replicas: Replicas | None = None,
) -> FitInputs:
    """Freeze what the rung keeps frozen and prepare its inputs (caching features first, the
    frozen parts on the plan's engine, outside the strategy's scope: every worker embeds on
    its own)."""
    replicas = replicas or ONE_DEVICE
    backbone, rung = classifier.backbone, plan.rung
    mode = choose_mode(plan, backbone)
    trainable = set_trainable(backbone, rung.unfreeze_from) if mode != "head" else 0
    if mode == "head":
        set_trainable(backbone, None)
    start = time.perf_counter()
    seed, even = plan.seed, replicas.count if keras.config.backend() == "jax" else 1
    val_mirrored = None
    if mode == "end_to_end":
        model, x_train, mirrored, x_val = (classifier.model, train.images, None, validation.images)
    else:
        boundary = plan.cache_boundary
        x_train, mirrored, x_val, val_mirrored = rung_features(
            classifier,
            mode,
            boundary,
            plan.mirrors_cached,
            train.images,
            validation.images,
            feature_dir,
            plan.engine,
            mirror_validation=True,
        )
        with replicas.scope():
            model = trainable_part(classifier, mode, boundary, x_train.shape[1:])
    batches = RowBatches(x_train, train.labels, n_classes, rung.batch_size, seed, mirrored, even)
    held_out = RowBatches(x_val, validation.labels, n_classes, rung.batch_size, multiple_of=even)
    trainable += sum(int(np.prod(w.shape)) for w in classifier.head.trainable_weights)
    return FitInputs(
        mode,
        model,
        batches,
        held_out,
        trainable,
        time.perf_counter() - start,
        classifier.softmax,
        val_mirrored,
    )


@dataclass(frozen=True)
class HeldOutProbabilities:
    """The trained classifier's class probabilities on the validation images and on their
    mirrored copies, scored on their cached features (the frozen part ran on ``stem_engine``)."""

    probabilities: np.ndarray
    mirrored: np.ndarray
    stem_engine: str


def held_out_probabilities(inputs: FitInputs, stem_engine: str) -> HeldOutProbabilities | None:
    """Score the validation images on the features the rung validated on: the frozen part's
    work is in the cache already, so an attempt's evaluation costs the trainable part alone.
    None where the rung trained on the images themselves (end to end)."""
    if inputs.validation_mirrored is None:
        return None
    rows = inputs.validation.rows
    return HeldOutProbabilities(
        predict_batches(inputs.model, rows, EMBED_BATCH, "score validation"),
        predict_batches(inputs.model, inputs.validation_mirrored, EMBED_BATCH, "score mirrored"),
        stem_engine,
    )


def _callbacks(
    rung: Rung, inputs: FitInputs, paths: TrainingPaths, resuming: bool, chief: bool
) -> list:
    callbacks = [
        EpochOrder(inputs.train),
        keras.callbacks.TerminateOnNaN(),
        *checkpoint_callbacks(paths, resuming, chief),
    ]
    if rung.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy",
                patience=rung.early_stopping_patience,
                restore_best_weights=True,
            )
        )
    return callbacks


def fit_rung(
    plan: RungPlan,
    inputs: FitInputs,
    paths: TrainingPaths,
    observers: Sequence[keras.callbacks.Callback] = (),
    replicas: Replicas | None = None,
) -> dict:
    """Compile and fit in the strategy's scope; resume from the attempt's checkpoint if there
    is one (the chief makes it resumable, then every worker reads it).

    ``observers`` are extra callbacks (a benchmark's clock, say) run after the rung's own.
    Returns the Keras history (per-epoch figures); raises TrainingError on divergence.
    """
    replicas, rung = replicas or ONE_DEVICE, plan.rung
    if uses_solver(rung, inputs.mode, len(inputs.train.labels)):
        return solve_head(
            inputs.train,
            inputs.validation,
            inputs.softmax,
            paths.history,
            write_log=replicas.is_chief,
        )
    model = replicas.fitting_model(inputs.model)
    with replicas.scope():
        steps = steps_per_execution(replicas.count)
        compile_for_rung(rung, plan.jit_compile, model, len(inputs.train), steps)
    resumed_at = prepare_resume(paths) if replicas.is_chief else None
    replicas.barrier()  # the chief may mend a corrupt checkpoint first; then all read it
    if not replicas.is_chief:
        resumed_at = checkpoint_epoch(paths.checkpoints, CHECKPOINT)
    resuming = resumed_at is not None
    paths.history.parent.mkdir(parents=True, exist_ok=True)
    if resuming:
        log.info(
            "rung %d %r: resuming from the checkpoint in %s (epoch %d done)",
            plan.index,
            rung.name,
            paths.checkpoints,
            resumed_at,
        )
    verbose = 1 if sys.stderr.isatty() else 2
    callbacks = [*_callbacks(rung, inputs, paths, resuming, replicas.is_chief), *observers]
    with replicas.scope():
        # The batches shuffle themselves by (seed, epoch); Keras's own shuffle of their order
        # would draw from a generator that the strategy's first look at the data advances.
        history = model.fit(
            inputs.train,
            validation_data=inputs.validation,
            epochs=rung.epochs,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
        )
    logs = {
        name: [float(np.ravel(v)[0]) for v in values] for name, values in history.history.items()
    }
    losses = logs.get("loss", [])
    if any(not math.isfinite(v) for v in losses):
        raise TrainingError(f"rung {plan.index} {rung.name!r}: loss diverged ({losses})")
    return logs
