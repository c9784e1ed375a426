"""Where the data and the backbone weights come from.

``data.source: auto`` and ``model.weights: auto`` (the defaults) take the local copies when
they exist (``data.path``, ``model.weights_file``) and otherwise the public sources:
CIFAR-10 from TensorFlow Datasets and Keras' ImageNet weights, both downloaded on first use.
The log says which was chosen. An explicit source or weights file is used as given, never
replaced by a download: the offline path stays an override.

A relative local path is resolved against the project root, then against DVC's repository
root: a stage of ``dvc exp run --temp`` or of a queued experiment runs in a copy under
``.dvc/tmp/exps``, from where ``../shared`` is somewhere else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from image_finetune.config import (
    IMAGENET,
    KERAS_BACKBONES,
    NAMED_WEIGHTS,
    DataParams,
    ModelParams,
    resolve_path,
)

log = logging.getLogger(__name__)

AUTO = "auto"
# Set by DVC for every stage: the repository's own root, also when `dvc exp run --temp` or a
# queued experiment runs the stage in a copy under .dvc/tmp/exps.
DVC_ROOT_ENV = "DVC_ROOT"
# A local file with one of these suffixes is a labels file (image_finetune.data.labels_file).
LABELS_FILE_SUFFIXES = (".csv", ".jsonl", ".ndjson")


def local_path(value: str, root: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """``value`` resolved against ``root``; a relative path that is not there is resolved
    against DVC's repository root instead, when a DVC stage runs elsewhere."""
    path = resolve_path(value, root)
    repository = environ.get(DVC_ROOT_ENV)
    if path.exists() or Path(value).expanduser().is_absolute() or not repository:
        return path
    return resolve_path(value, Path(repository))


def choose_data(
    data: DataParams, root: Path, environ: Mapping[str, str] = os.environ
) -> DataParams:
    """``data`` with its source decided and its local paths (extra ones too) made absolute."""
    if data.extra_paths:
        data = data.model_copy(
            update={
                "extra_paths": [str(local_path(extra, root, environ)) for extra in data.extra_paths]
            }
        )
    path = local_path(data.path, root, environ)
    if data.source == "tfds":
        return data
    if data.source != AUTO:
        return data.model_copy(update={"path": str(path)})
    if path.exists():
        labels = path.is_file() and path.suffix.lower() in LABELS_FILE_SUFFIXES
        source = "labels" if labels else "folder"
        log.info("data: the local copy %s (%s)", path, source)
        return data.model_copy(update={"source": source, "path": str(path)})
    log.warning(
        "data: no local copy at %s; using TensorFlow Datasets %r (downloaded on first "
        "use; set data.path to a local copy to stay offline)",
        path,
        data.tfds_name,
    )
    return data.model_copy(update={"source": "tfds"})


def choose_weights(
    model: ModelParams, root: Path, environ: Mapping[str, str] = os.environ
) -> ModelParams:
    """``model`` with its weights decided: a local file (absolute), ``imagenet`` or ``none``."""
    choice = model.weights.lower()
    if choice in NAMED_WEIGHTS:
        return model.model_copy(update={"weights": choice})
    if choice != AUTO:
        return model.model_copy(update={"weights": str(local_path(model.weights, root, environ))})
    path = local_path(model.weights_file, root, environ)
    if path.exists():
        log.info("weights: the local copy %s", path)
        return model.model_copy(update={"weights": str(path)})
    if model.backbone not in KERAS_BACKBONES:
        log.warning(
            "weights: no local copy at %s and %s has no download; the run will say what is missing",
            path,
            model.backbone,
        )
        return model.model_copy(update={"weights": str(path)})
    log.warning(
        "weights: no local copy at %s; using Keras' ImageNet weights for %s "
        "(downloaded on first use)",
        path,
        model.backbone,
    )
    return model.model_copy(update={"weights": IMAGENET})
