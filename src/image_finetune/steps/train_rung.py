"""The ``train-rung`` step: one attempt of the retrain loop (one rung of the ladder),
warm-started from the previous rung's classifier. A finished attempt with the same inputs
is reused; an interrupted one resumes from its last checkpoint. With several workers (see
:mod:`image_finetune.training.distribute`) every worker runs this step and only the chief
writes."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from image_finetune.cache import (
    ATTEMPTS,
    CHECKPOINTS,
    FEATURES,
    KEY_FILE,
    claim_entry,
    entry_in_use,
    entry_writing,
    holds_key,
    write_key,
)
from image_finetune.config import Params
from image_finetune.data.canonical import Split, load_split, manifest_digest, read_manifest
from image_finetune.locate import choose_weights
from image_finetune.steps.layout import (
    HELD_OUT_SCORES,
    HISTORY_FILE,
    MODEL_FILE,
    RESULT_FILE,
    write_held_out_scores,
)
from image_finetune.training.checkpoints import TrainingPaths
from image_finetune.training.distribute import Replicas, start_replicas
from image_finetune.training.features import STEM_PRECISION
from image_finetune.training.fit import (
    AttemptResult,
    HeldOutProbabilities,
    build_rung_classifier,
    fit_rung,
    held_out_probabilities,
    prepare_fit,
)
from image_finetune.training.model import Classifier
from image_finetune.training.plan import (
    CacheKeys,
    DataFacts,
    RungPlan,
    RuntimeFacts,
    cache_keys,
    log_adaptation,
    plan_rung,
)
from image_finetune.training.runtime import accelerator_available, configure_backend

log = logging.getLogger(__name__)


def train_rung(
    params: Params,
    index: int,
    data: Path,
    out: Path,
    cache: Path,
    root: Path,
    warm_start: Path | None = None,
    observers: Sequence[keras.callbacks.Callback] = (),
) -> AttemptResult:
    """Train rung ``index`` on ``data``; write ``model.keras``, ``history.csv`` and
    ``result.json`` to ``out``. ``cache`` keeps features, checkpoints and finished attempts;
    the weights are chosen by :func:`choose_weights` (relative paths against ``root``).
    ``observers`` are extra Keras callbacks for the fit (see :func:`fit_rung`)."""
    replicas = start_replicas(params.train)  # first: devices are fixed once the runtime starts
    mixed = configure_backend(params.train.seed, params.train.mixed_precision)
    model = choose_weights(params.model, root)
    weights_path = model.weights_path(root)
    plan = plan_rung(
        params,
        index,
        _data_facts(data),
        RuntimeFacts(
            keras.config.backend(), accelerator_available(), replicas.count, replicas.layout
        ),
        model,
    )
    keys = cache_keys(plan, weights_path, warm_start, step=__name__)
    # Held while the attempt runs: a prune leaves its entries alone, and a second run of the
    # same attempt (another experiment) waits, then reuses it. Not across workers, who all
    # run this step at once and meet in the fit.
    with ExitStack() as held:
        held.enter_context(entry_in_use(cache, keys.attempt))
        if replicas.count == 1:
            held.enter_context(entry_writing(cache, keys.attempt))
        finished = cache / ATTEMPTS / keys.attempt
        if _is_finished(finished, keys.attempt):
            return _reuse(finished, out, index, plan.written.name, replicas)
        held.enter_context(entry_in_use(cache, keys.features))
        return _train(
            plan, data, out, cache, keys, mixed, replicas, weights_path, warm_start, observers
        )


def _data_facts(data: Path) -> DataFacts:
    splits = read_manifest(data)["splits"]
    return DataFacts(splits["train"]["count"], splits["validation"]["count"], manifest_digest(data))


def _is_finished(finished: Path, attempt_key: str) -> bool:
    """A finished attempt for this key, whole: its key recorded, its result and model there."""
    return (
        holds_key(finished, attempt_key)
        and (finished / RESULT_FILE).exists()
        and (finished / MODEL_FILE).exists()
    )


def _reuse(finished: Path, out: Path, index: int, rung: str, replicas: Replicas) -> AttemptResult:
    log.info("rung %d %r: reusing the finished attempt %s", index, rung, finished)
    if replicas.is_chief:
        shutil.copytree(finished, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(KEY_FILE))
    replicas.barrier()  # the workers' next rung starts from what the chief copied
    result = json.loads((finished / RESULT_FILE).read_text())
    return AttemptResult(**{**result, "model_path": str(out / MODEL_FILE)})


def _train(
    plan: RungPlan,
    data: Path,
    out: Path,
    cache: Path,
    keys: CacheKeys,
    mixed: bool,
    replicas: Replicas,
    weights_path: Path | None,
    warm_start: Path | None,
    observers: Sequence[keras.callbacks.Callback],
) -> AttemptResult:
    n_classes = len(read_manifest(data)["class_names"])
    train, validation = load_split(data, "train"), load_split(data, "validation")
    log_adaptation(plan)
    with replicas.scope():
        classifier = build_rung_classifier(
            plan, n_classes, int(train.images.shape[1]), weights_path, warm_start
        )
    paths = TrainingPaths(
        features=cache / FEATURES / keys.features, checkpoints=cache / CHECKPOINTS / keys.attempt
    )
    inputs = _embedded_inputs(
        plan, classifier, (train, validation), n_classes, paths, cache, keys, replicas
    )
    rung = plan.rung
    log.info(
        "rung %d %r: mode=%s image_size=%d trainable=%d epochs=%d batch=%d lr=%g "
        "backend=%s mixed=%s on %s",
        plan.index,
        rung.name,
        inputs.mode,
        plan.image_size,
        inputs.trainable_params,
        rung.epochs,
        rung.batch_size,
        rung.learning_rate,
        keras.config.backend(),
        mixed,
        replicas.describe(),
    )
    start = time.perf_counter()
    history = fit_rung(plan, inputs, paths, observers if replicas.is_chief else (), replicas)
    seconds = time.perf_counter() - start
    epochs = len(history.get("loss", []))
    result = AttemptResult(
        index=plan.index,
        rung=rung.name,
        mode=inputs.mode,
        model_path=str(out / MODEL_FILE),
        epochs_run=epochs,
        best_val_accuracy=float(max(history.get("val_accuracy", [float("nan")]))),
        train_seconds=round(seconds, 2),
        embed_seconds=round(inputs.embed_seconds, 2),
        images_per_second=round(epochs * len(train.labels) / max(seconds, 1e-9), 1),
        trainable_params=int(inputs.trainable_params),
        backend=keras.config.backend(),
        mixed_precision=mixed,
        distribution=replicas.describe(),
        global_batch=rung.batch_size,
    )
    # One device: the workers of a distributed fit would each score (their attempts are
    # evaluated on the saved model instead).
    scores = held_out_probabilities(inputs, plan.engine) if replicas.count == 1 else None
    attempt = SavedAttempt(classifier, result, scores, np.asarray(validation.labels))
    _save_attempt(attempt, paths, out, cache / ATTEMPTS / keys.attempt, replicas)
    return result


@dataclass(frozen=True)
class SavedAttempt:
    """What an attempt writes: the classifier, its result and (None: not scored) its
    validation scores on the cached features, for the validation ``labels``."""

    classifier: Classifier
    result: AttemptResult
    scores: HeldOutProbabilities | None
    labels: np.ndarray


def _embedded_inputs(
    plan: RungPlan,
    classifier: Classifier,
    splits: tuple[Split, Split],
    n_classes: int,
    paths: TrainingPaths,
    cache: Path,
    keys: CacheKeys,
    replicas: Replicas,
):
    """The rung's fit inputs, its frozen part embedded into the feature cache entry once."""
    what = _features_what(plan)
    with ExitStack() as embedding:
        if replicas.count == 1:  # one run embeds, the others wait and read (workers: each
            embedding.enter_context(entry_writing(cache, keys.features))  # its own, as before)
            claim_entry(paths.features, keys.features, what)
        inputs = prepare_fit(plan, classifier, *splits, n_classes, paths.features, replicas)
        if (
            replicas.is_chief
            and paths.features.exists()
            and not holds_key(paths.features, keys.features)
        ):
            write_key(paths.features, keys.features, what)  # what the workers embedded
    return inputs


def _save_attempt(
    attempt: SavedAttempt, paths: TrainingPaths, out: Path, finished: Path, replicas: Replicas
) -> None:
    """The chief writes the attempt; every worker returns once it is on disk."""
    if replicas.is_chief:
        _write_attempt(attempt, paths, out, finished)
    else:  # saving takes every worker (its reads are collective): the others save aside
        with tempfile.TemporaryDirectory(prefix="attempt-") as aside:
            attempt.classifier.model.save(Path(aside) / MODEL_FILE)
        log.info(
            "rung %d %r: done on worker %d; the chief writes the attempt",
            attempt.result.index,
            attempt.result.rung,
            replicas.worker,
        )
    replicas.barrier()


def _features_what(plan: RungPlan) -> str:
    """What a feature entry holds, for ``cache ls``."""
    return (
        f"{plan.model.backbone} {plan.image_size}px up to "
        f"{plan.cache_boundary or 'the pool'} on {plan.engine}"
    )


def _write_attempt(attempt: SavedAttempt, paths: TrainingPaths, out: Path, finished: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    attempt.classifier.model.save(out / MODEL_FILE)
    (out / HELD_OUT_SCORES).unlink(missing_ok=True)  # an earlier run's, of another model
    if (scores := attempt.scores) is not None:
        write_held_out_scores(
            out / MODEL_FILE,
            attempt.labels,
            scores.probabilities,
            scores.mirrored,
            f"cached features (frozen part on {scores.stem_engine} {STEM_PRECISION})",
        )
    shutil.move(paths.history, out / HISTORY_FILE)
    (out / RESULT_FILE).write_text(json.dumps(asdict(attempt.result), indent=2) + "\n")
    _keep_finished(out, finished)


def _keep_finished(out: Path, finished: Path) -> None:
    """Copy the attempt into the cache of finished attempts, with its key, atomically (by
    rename): a reader sees the whole attempt or none."""
    if holds_key(finished, finished.name):
        return  # another run sharing the cache finished the same attempt first
    staging = finished.with_name(f".{finished.name}.{uuid.uuid4().hex[:8]}")
    shutil.copytree(out, staging)
    result = json.loads((out / RESULT_FILE).read_text())
    write_key(staging, finished.name, f"rung {result['index']} {result['rung']!r}")
    shutil.rmtree(finished, ignore_errors=True)  # an untrusted one (no key): replaced
    try:
        staging.rename(finished)
    except OSError:  # another run sharing the cache finished the same attempt first
        shutil.rmtree(staging, ignore_errors=True)
