"""The frozen plan of one rung, settled once before it trains: the rung adapted to the data's
size and scaled to the replicas, its resolution, weights, augmentation, the engine its frozen
parts embed on; and the cache keys of what it computes. Built by pure functions from the
params, the rung's index and the facts of the data and the runtime; the training code takes
the plan (or the few values it needs), never the whole params."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from image_finetune.codegraph import source_digest
from image_finetune.config import AugmentParams, ModelParams, Params, Rung
from image_finetune.data.canonical import sha256_file
from image_finetune.training.distribute import scaled_rung
from image_finetune.training.features import STEM_PRECISION, cache_key, choose_stem_engine

log = logging.getLogger(__name__)

MIN_STEPS_PER_EPOCH = 8


@dataclass(frozen=True)
class DataFacts:
    """What a rung's plan needs to know of the data: the sizes of the splits it trains and
    validates on, and the digest of the dataset (its manifest's)."""

    train_size: int
    validation_size: int
    digest: str


@dataclass(frozen=True)
class RuntimeFacts:
    """Where a rung trains: the Keras backend, whether it sees a GPU, the replicas (their
    count, and their layout, e.g. ``mirrored x2``)."""

    backend: str
    accelerated: bool
    replicas: int = 1
    layout: str = "one_device x1"


@dataclass(frozen=True)
class RungPlan:
    """Everything one rung trains by, settled once (see :func:`plan_rung`)."""

    index: int
    written: Rung  # as params.yaml writes it
    rung: Rung  # adapted to the data's size and scaled to the replicas: what trains
    model: ModelParams  # its weights decided
    augment: AugmentParams
    image_size: int  # the backbone's resolution
    seed: int
    cache_features: bool
    cache_boundary: str | None
    flip_cache: bool
    mirrors_cached: bool  # the feature cache holds mirrored copies of the training images
    jit_compile: str
    batch_scaling: str
    engine: str  # what the frozen parts embed on
    data: DataFacts
    runtime: RuntimeFacts


def plan_rung(
    params: Params,
    index: int,
    data: DataFacts,
    runtime: RuntimeFacts,
    model: ModelParams | None = None,
) -> RungPlan:
    """The plan of rung ``index`` of ``params`` on ``data`` and ``runtime``; ``model``: the
    model params with their weights decided (image_finetune.locate.choose_weights), if
    ``params.model`` does not decide them."""
    train, written = params.train, params.train.ladder[index]
    rung = scaled_rung(adapt_rung(written, data.train_size), runtime.replicas, train.batch_scaling)
    mirrors = train.flip_cache and params.augment.horizontal_flip
    images = data.train_size * (2 if mirrors else 1) + data.validation_size
    engine = choose_stem_engine(train.stem_engine, runtime.backend, runtime.accelerated, images)
    return RungPlan(
        index=index,
        written=written,
        rung=rung,
        model=model or params.model,
        augment=params.augment,
        image_size=written.image_size or params.model.image_size,
        seed=train.seed,
        cache_features=train.cache_features,
        cache_boundary=train.cache_boundary,
        flip_cache=train.flip_cache,
        mirrors_cached=mirrors,
        jit_compile=train.jit_compile,
        batch_scaling=train.batch_scaling,
        engine=engine,
        data=data,
        runtime=runtime,
    )


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


def log_adaptation(plan: RungPlan) -> None:
    """Say how the rung differs from the one written, if it does."""
    written, rung = plan.written, plan.rung
    if rung != written:
        log.info(
            "rung %d %r on %d training images: batch %d -> %d, epochs %d -> %d, learning "
            "rate %g -> %g (at least %d optimizer steps; batch scaling %s)",
            plan.index,
            written.name,
            plan.data.train_size,
            written.batch_size,
            rung.batch_size,
            written.epochs,
            rung.epochs,
            written.learning_rate,
            rung.learning_rate,
            written.min_steps,
            plan.batch_scaling,
        )


# The code that shapes the feature cache: training.fit builds the classifier and embeds
# through features/model/inference/engines. Its whole import closure is hashed (codegraph),
# never a hand-kept list; an attempt adds the closure of the step that runs it.
FEATURE_CODE = ("image_finetune.training.fit",)


def code_fingerprint(modules: tuple[str, ...] = FEATURE_CODE) -> str:
    """Hash of the source of ``modules`` and everything they import: caches die with a
    change to any module that shaped them."""
    return cache_key(source_digest(*modules))


@dataclass(frozen=True)
class CacheKeys:
    """The keys of what a rung computes: its feature cache and the attempt as a whole."""

    features: str
    attempt: str


def weights_fingerprint(model: ModelParams, weights_path: Path | None) -> str:
    """What identifies the pretrained weights: the file's hash, or imagenet/none."""
    return sha256_file(weights_path) if weights_path else model.weights.lower()


def cache_keys(
    plan: RungPlan, weights_path: Path | None, warm_start: Path | None, step: str | None = None
) -> CacheKeys:
    """What determines the feature cache and the attempt (reads the weights, the warm start
    and the code to hash them). ``step``: the module that runs the attempt (it adapts the
    rung: its code shapes the attempt too)."""
    features = cache_key(
        plan.model.backbone,
        weights_fingerprint(plan.model, weights_path),
        plan.image_size,
        plan.cache_boundary,
        plan.data.digest,
        plan.runtime.backend,
        code_fingerprint(),
        plan.engine,
        STEM_PRECISION,
    )
    attempt_code = FEATURE_CODE + ((step,) if step else ())
    attempt = cache_key(
        features,
        code_fingerprint(attempt_code),
        plan.written.model_dump(mode="json"),
        plan.model.dropout,
        plan.augment.model_dump(mode="json"),
        plan.seed,
        plan.cache_features,
        plan.flip_cache,
        sha256_file(warm_start) if warm_start else None,
        plan.runtime.layout if plan.runtime.replicas > 1 else None,
        plan.batch_scaling,
    )
    return CacheKeys(features, attempt)
