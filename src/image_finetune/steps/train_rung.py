"""The ``train-rung`` step: one attempt of the retrain loop (one rung of the ladder),
warm-started from the previous rung's classifier. A finished attempt with the same inputs
is reused; an interrupted one resumes from its last checkpoint. With several workers (see
:mod:`image_finetune.distribute`) every worker runs this step and only the chief writes."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import keras

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
from image_finetune.config import Params, Rung
from image_finetune.data.canonical import load_split, manifest_digest, read_manifest
from image_finetune.distribute import Replicas, scaled_rung
from image_finetune.locate import choose_weights
from image_finetune.model import resolve_weights
from image_finetune.steps.layout import HISTORY_FILE, MODEL_FILE, RESULT_FILE
from image_finetune.train import (
    AttemptResult,
    TrainingPaths,
    adapt_rung,
    attempt_keys,
    build_rung_classifier,
    configure_runtime,
    fit_plan,
    plan_fit,
    rung_image_size,
    stem_engine,
)

log = logging.getLogger(__name__)


def train_rung(
    params: Params, index: int, data: Path, out: Path, cache: Path, root: Path,
    warm_start: Path | None = None, observers: Sequence[keras.callbacks.Callback] = (),
) -> AttemptResult:
    """Train rung ``index`` on ``data``; write ``model.keras``, ``history.csv`` and
    ``result.json`` to ``out``. ``cache`` keeps features, checkpoints and finished attempts;
    the weights are chosen by :func:`choose_weights` (relative paths against ``root``).
    ``observers`` are extra Keras callbacks for the fit (see :func:`fit_plan`)."""
    params = params.model_copy(update={"model": choose_weights(params.model, root)})
    rung = params.train.ladder[index]
    mixed, replicas = configure_runtime(params)
    weights_path = resolve_weights(params.model, root)
    splits = read_manifest(data)["splits"]
    engine = stem_engine(params, splits["train"]["count"], splits["validation"]["count"])
    feature_key, attempt_key = attempt_keys(params, index, weights_path, manifest_digest(data),
                                            warm_start, replicas, step=__name__, engine=engine)
    # Held while the attempt runs: a prune leaves its entries alone, and a second run of the
    # same attempt (another experiment) waits, then reuses it. Not across workers, who all
    # run this step at once and meet in the fit.
    with ExitStack() as held:
        held.enter_context(entry_in_use(cache, attempt_key))
        if replicas.count == 1:
            held.enter_context(entry_writing(cache, attempt_key))
        finished = cache / ATTEMPTS / attempt_key
        if _is_finished(finished, attempt_key):
            return _reuse(finished, out, index, rung.name, replicas)
        held.enter_context(entry_in_use(cache, feature_key))
        return _train(params, index, data, out, cache, (feature_key, attempt_key), mixed,
                      replicas, weights_path, warm_start, observers, engine)


def _is_finished(finished: Path, attempt_key: str) -> bool:
    """A finished attempt for this key, whole: its key recorded, its result and model there."""
    return (holds_key(finished, attempt_key) and (finished / RESULT_FILE).exists()
            and (finished / MODEL_FILE).exists())


def _reuse(finished: Path, out: Path, index: int, rung: str,
           replicas: Replicas) -> AttemptResult:
    log.info("rung %d %r: reusing the finished attempt %s", index, rung, finished)
    if replicas.is_chief:
        shutil.copytree(finished, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(KEY_FILE))
    replicas.barrier()  # the workers' next rung starts from what the chief copied
    result = json.loads((finished / RESULT_FILE).read_text())
    return AttemptResult(**{**result, "model_path": str(out / MODEL_FILE)})


def _train(params, index, data, out, cache, keys, mixed, replicas, weights_path, warm_start,
           observers, engine) -> AttemptResult:
    feature_key, attempt_key = keys
    manifest = read_manifest(data)
    n_classes = len(manifest["class_names"])
    train, validation = load_split(data, "train"), load_split(data, "validation")
    params, rung = fit_to_data(params, index, len(train.labels), replicas)
    with replicas.scope():
        classifier = build_rung_classifier(params, rung, n_classes, int(train.images.shape[1]),
                                           weights_path, warm_start)
    paths = TrainingPaths(features=cache / FEATURES / feature_key,
                          checkpoints=cache / CHECKPOINTS / attempt_key)
    what = _features_what(params, rung, engine)
    with ExitStack() as embedding:
        if replicas.count == 1:  # one run embeds, the others wait and read (workers: each
            embedding.enter_context(entry_writing(cache, feature_key))  # its own, as before)
            claim_entry(paths.features, feature_key, what)
        plan = plan_fit(params, rung, classifier, train, validation, n_classes,
                        paths.features, replicas, engine=engine)
        if replicas.is_chief and paths.features.exists() and not holds_key(paths.features,
                                                                            feature_key):
            write_key(paths.features, feature_key, what)  # what the workers embedded
    log.info("rung %d %r: mode=%s image_size=%d trainable=%d epochs=%d batch=%d lr=%g "
             "backend=%s mixed=%s on %s", index, rung.name, plan.mode,
             rung_image_size(params, rung), plan.trainable_params, rung.epochs, rung.batch_size,
             rung.learning_rate, keras.config.backend(), mixed, replicas.describe())
    start = time.perf_counter()
    history = fit_plan(params, index, plan, paths, observers if replicas.is_chief else (),
                       replicas)
    seconds = time.perf_counter() - start
    epochs = len(history.get("loss", []))
    result = AttemptResult(
        index=index, rung=rung.name, mode=plan.mode, model_path=str(out / MODEL_FILE),
        epochs_run=epochs,
        best_val_accuracy=float(max(history.get("val_accuracy", [float("nan")]))),
        train_seconds=round(seconds, 2), embed_seconds=round(plan.embed_seconds, 2),
        images_per_second=round(epochs * len(train.labels) / max(seconds, 1e-9), 1),
        trainable_params=int(plan.trainable_params), backend=keras.config.backend(),
        mixed_precision=mixed, distribution=replicas.describe(), global_batch=rung.batch_size)
    if replicas.is_chief:
        _write_attempt(classifier, paths, result, out, cache / ATTEMPTS / attempt_key)
    else:  # saving takes every worker (its reads are collective): the others save aside
        with tempfile.TemporaryDirectory(prefix="attempt-") as aside:
            classifier.save(Path(aside) / MODEL_FILE)
        log.info("rung %d %r: done on worker %d; the chief writes the attempt", index,
                 rung.name, replicas.worker)
    replicas.barrier()  # every worker returns once the attempt is on disk
    return result


def _features_what(params: Params, rung: Rung, engine: str) -> str:
    """What a feature entry holds, for ``cache ls``."""
    return (f"{params.model.backbone} {rung_image_size(params, rung)}px up to "
            f"{params.train.cache_boundary or 'the pool'} on {engine}")


def _write_attempt(classifier: keras.Model, paths: TrainingPaths, result: AttemptResult,
                   out: Path, finished: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    classifier.save(out / MODEL_FILE)
    shutil.move(paths.history, out / HISTORY_FILE)
    (out / RESULT_FILE).write_text(json.dumps(asdict(result), indent=2) + "\n")
    _keep_finished(out, finished)


def fit_to_data(
    params: Params, index: int, train_size: int, replicas: Replicas | None = None,
) -> tuple[Params, Rung]:
    """The params with rung ``index`` adapted to the training set's size and scaled to the
    replicas (see :func:`scaled_rung`); and that rung."""
    ladder = list(params.train.ladder)
    rung = ladder[index]
    ladder[index] = scaled_rung(adapt_rung(rung, train_size),
                                replicas.count if replicas else 1, params.train.batch_scaling)
    if ladder[index] != rung:
        log.info("rung %d %r on %d training images: batch %d -> %d, epochs %d -> %d, learning "
                 "rate %g -> %g (at least %d optimizer steps; batch scaling %s)", index,
                 rung.name, train_size, rung.batch_size,
                 ladder[index].batch_size, rung.epochs, ladder[index].epochs, rung.learning_rate,
                 ladder[index].learning_rate, rung.min_steps, params.train.batch_scaling)
    train = params.train.model_copy(update={"ladder": ladder})
    return params.model_copy(update={"train": train}), ladder[index]


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
