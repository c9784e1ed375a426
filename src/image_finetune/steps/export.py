"""The ``export-savedmodel`` step: a TF Serving SavedModel of a classifier."""

from __future__ import annotations

from pathlib import Path

from image_finetune.engines import write_savedmodel
from image_finetune.inference import load_classifier


def export_savedmodel(model: Path, out: Path) -> Path:
    """Write a SavedModel whose ``serving_default`` signature takes uint8 images and answers
    ``probabilities`` and ``embedding`` (the pooled features), as the fast engines do."""
    return write_savedmodel(load_classifier(model), out)
