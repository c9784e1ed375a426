"""The ``augment`` step: the augmentation policy and a preview grid of augmented real
images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from image_finetune.config import Params
from image_finetune.data.canonical import load_split
from image_finetune.training.augment import preview_rows, write_preview


def preview_augmentation(params: Params, data: Path, out: Path) -> Path:
    """Write ``policy.json`` and ``preview.png`` (the first train images of each class in
    turn, with augmented copies) to ``out``; return the preview's path."""
    train = load_split(data, "train")
    picks = preview_rows(np.asarray(train.labels), params.augment.preview_images)
    return write_preview(params.augment, train.images[picks], out, params.train.seed)
