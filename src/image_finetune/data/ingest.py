"""Reading a configured source and making the canonical splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from image_finetune.config import DataParams
from image_finetune.data.canonical import split_stratified
from image_finetune.data.image_folder import read_image_folder
from image_finetune.data.labels_file import read_labels_file
from image_finetune.data.layouts import UNSPLIT
from image_finetune.data.rows import RowView, take
from image_finetune.data.sources import (
    RawDataset,
    read_cifar_binary,
    read_cifar_python,
    read_tfds,
)
from image_finetune.data.stable_split import BY_CONTENT, split_by_content
from image_finetune.errors import IngestError

# How a split was made: as the source has it, held out of train (stratified, seeded), or
# by each file's content (data.stable_split.BY_CONTENT).
FROM_SOURCE, STRATIFIED = "source", "stratified"


def read_source(params: DataParams, source_path: Path, scratch: Path) -> RawDataset:
    """Decode the configured source into per-split arrays (an image folder's or a labels
    file's kept on disk in ``scratch``)."""
    if params.source in ("folder", "labels"):
        reader = read_image_folder if params.source == "folder" else read_labels_file
        return reader(source_path, params.image_size, params.on_wrong_size, scratch,
                      params.max_per_class)
    if params.image_size != 32:
        raise IngestError(f"data.image_size={params.image_size}: {params.source} images are 32x32")
    if params.source == "cifar-python":
        return read_cifar_python(source_path, params.max_per_class)
    if params.source == "cifar-binary":
        return read_cifar_binary(source_path, params.max_per_class)
    if params.source == "tfds":
        return read_tfds(params.tfds_name, params.max_per_class)
    raise ValueError(f"data.source={params.source!r}: choose the source first "
                     "(image_finetune.locate.choose_data)")


def canonical_splits(
    raw: RawDataset, validation_fraction: float, seed: int, min_validation_per_class: int = 1,
    test_fraction: float = 0.1,
) -> tuple[dict[str, tuple[np.ndarray | RowView, np.ndarray]], dict[str, list[str]], str]:
    """(train, validation, test) images (row views: nothing is copied) and labels, the
    source file of each image where the source names them, and how validation was made: a
    validation split in the source is kept as is, otherwise it is held out of train,
    stratified and seeded (see
    :func:`~image_finetune.data.canonical.held_out_count`). A source without splits is split
    by each file's content (:func:`~image_finetune.data.stable_split.split_by_content`):
    ``test_fraction`` to test, ``validation_fraction`` to validation."""
    if UNSPLIT in raw.images:
        rows = split_by_content(raw.content_sha256[UNSPLIT], seed, test_fraction,
                                validation_fraction)
        chosen = {split: (UNSPLIT, rows[split]) for split in ("train", "validation", "test")}
        holdout = BY_CONTENT
    elif "validation" in raw.images:
        chosen = {"train": ("train", None), "validation": ("validation", None)}
        holdout = FROM_SOURCE
    else:
        keep, held = split_stratified(raw.labels["train"], validation_fraction, seed,
                                      min_validation_per_class)
        chosen = {"train": ("train", keep), "validation": ("train", held)}
        holdout = STRATIFIED
    chosen.setdefault("test", ("test", None))
    splits, sources = {}, {}
    for split, (origin, rows) in chosen.items():
        picked = slice(None) if rows is None else rows
        splits[split] = (take(raw.images[origin], rows), raw.labels[origin][picked])
        if origin in raw.sources:
            sources[split] = list(np.asarray(raw.sources[origin], dtype=object)[picked])
    return splits, sources, holdout


def empty_classes(splits: dict[str, tuple], class_names: list[str]) -> list[str]:
    """Each class a split holds no image of, as problems naming the class and split."""
    counts = {split: np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
              for split, (_, labels) in splits.items()}
    totals = sum(counts.values())
    return [f"{name}: none of its {totals[index]} images falls in {split}"
            for split, per_class in counts.items()
            for index, name in enumerate(class_names) if per_class[index] == 0]
