"""The ``profile`` step: the reference profile of a trained classifier, from the held-out
validation images (never the test set), its PCA fitted on a seeded sample of training
images. The register step logs it with the version, so model and reference travel together."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from image_finetune.config import Params
from image_finetune.data.canonical import load_split, read_manifest
from image_finetune.data.rows import iter_chunks, take
from image_finetune.engines import serving_predictor
from image_finetune.monitoring.profile import ReferenceProfile, build_profile
from image_finetune.monitoring.summaries import image_statistics, summarise_outputs

log = logging.getLogger(__name__)


def profile_classifier(
    params: Params, data: Path, model: Path, out: Path, engine: Path | None = None
) -> ReferenceProfile:
    """Summarise the validation split with the classifier in ``model`` and write the
    reference profile to ``out``. ``engine``: the export-engine step's folder; the summaries
    are then computed on the engine and precision that will serve (the server's windows are
    summarised there too), else on Keras."""
    settings = params.evaluate
    class_names = read_manifest(data)["class_names"]
    predictor, _ = serving_predictor(model, engine)
    train = load_split(data, "train").images
    count = min(settings.profile_fit_images, len(train))
    rows = np.sort(
        np.random.default_rng(params.train.seed).choice(len(train), count, replace=False)
    )
    _, training_embeddings = summarise_outputs(
        predictor.outputs, take(train, rows), settings.batch_size
    )
    validation = load_split(data, "validation").images
    probabilities, embeddings = summarise_outputs(
        predictor.outputs, validation, settings.batch_size
    )
    stats = np.concatenate([image_statistics(chunk) for chunk in iter_chunks(validation)])
    profile = build_profile(
        class_names,
        probabilities,
        embeddings,
        stats,
        training_embeddings,
        settings.profile_dimensions,
        summarised_on=(predictor.engine, predictor.precision),
    )
    profile.save(out)
    log.info(
        "reference profile: %d validation images on %s %s, PCA(%d) fitted on %d training "
        "images -> %s",
        len(profile),
        profile.engine,
        profile.precision,
        profile.dimensions,
        count,
        out,
    )
    return profile
