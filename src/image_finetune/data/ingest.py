"""Reading a configured source and making the canonical splits."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from image_finetune.config import DataParams
from image_finetune.data.canonical import split_stratified
from image_finetune.data.files import walk
from image_finetune.data.image_folder import read_image_folder
from image_finetune.data.images import decode_image
from image_finetune.data.labels_file import read_labels_file
from image_finetune.data.layouts import IMAGE_SUFFIXES, UNSPLIT
from image_finetune.data.rows import JoinedRows, RowSink, RowView, take
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
        return reader(
            source_path, params.image_size, params.on_wrong_size, scratch, params.max_per_class
        )
    if params.image_size != 32:
        raise IngestError(f"data.image_size={params.image_size}: {params.source} images are 32x32")
    if params.source == "cifar-python":
        return read_cifar_python(source_path, params.max_per_class)
    if params.source == "cifar-binary":
        return read_cifar_binary(source_path, params.max_per_class)
    if params.source == "tfds":
        return read_tfds(params.tfds_name, params.max_per_class)
    raise ValueError(
        f"data.source={params.source!r}: choose the source first "
        "(image_finetune.locate.choose_data)"
    )


def canonical_splits(
    raw: RawDataset,
    validation_fraction: float,
    seed: int,
    min_validation_per_class: int = 1,
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
        rows = split_by_content(
            raw.content_sha256[UNSPLIT], seed, test_fraction, validation_fraction
        )
        chosen: dict[str, tuple[str, np.ndarray | None]] = {
            split: (UNSPLIT, rows[split]) for split in ("train", "validation", "test")
        }
        holdout = BY_CONTENT
    elif "validation" in raw.images:
        chosen = {"train": ("train", None), "validation": ("validation", None)}
        holdout = FROM_SOURCE
    else:
        keep, held = split_stratified(
            raw.labels["train"], validation_fraction, seed, min_validation_per_class
        )
        chosen = {"train": ("train", keep), "validation": ("train", held)}
        holdout = STRATIFIED
    chosen.setdefault("test", ("test", None))
    splits: dict[str, tuple[np.ndarray | RowView, np.ndarray]] = {}
    sources: dict[str, list[str]] = {}
    for split, (origin, index) in chosen.items():
        picked = slice(None) if index is None else index
        splits[split] = (take(raw.images[origin], index), raw.labels[origin][picked])
        if origin in raw.sources:
            sources[split] = list(np.asarray(raw.sources[origin], dtype=object)[picked])
    return splits, sources, holdout


def empty_classes(splits: dict[str, tuple], class_names: list[str]) -> list[str]:
    """Each class a split holds no image of, as problems naming the class and split."""
    counts = {
        split: np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
        for split, (_, labels) in splits.items()
    }
    totals = sum(counts.values(), start=np.zeros(len(class_names), dtype=np.int64))
    return [
        f"{name}: none of its {totals[index]} images falls in {split}"
        for split, per_class in counts.items()
        for index, name in enumerate(class_names)
        if per_class[index] == 0
    ]


def read_extra_images(
    paths: list[str],
    class_names: list[str],
    image_size: int,
    how: str,
    scratch: Path,
) -> tuple[RowView | None, np.ndarray, list[str]]:
    """Labelled images from image-folder trees (``class/file`` or ``split/class/file``; the
    split, if any, is ignored): rows kept in ``scratch``, labels by ``class_names``, and each
    image's source name. Files beside the class folders (an export's own records) are
    skipped; anything else that is not a readable image of a known class is an error."""
    problems: list[str] = []
    sink, labels, names = RowSink(scratch), [], []
    for root in map(Path, paths):
        for entry in walk(root, problems):
            parts = entry.path.parts
            if entry.is_folder or len(parts) < 2:
                continue  # folders, and an export's own files at its top
            problem = _extra_problem(entry.path, parts, class_names)
            if problem:
                problems.append(f"{root.name}/{problem}")
                continue
            try:
                image = decode_image(entry.read(), str(entry.path), image_size, how)
            except ValueError as exc:
                problems.append(f"{root.name}/{exc}")
                continue
            sink.append(image)
            labels.append(class_names.index(parts[-2]))
            names.append(f"extra/{root.name}/{entry.path.as_posix()}")
    if problems:
        raise IngestError("data.extra_paths: bad files in the extra labelled images", problems)
    rows = sink.rows() if labels else None
    return rows, np.asarray(labels, dtype=np.int64), names


def _extra_problem(
    path: PurePosixPath, parts: tuple[str, ...], class_names: list[str]
) -> str | None:
    if len(parts) > 3:
        return f"{path}: not at class/file or split/class/file"
    if Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return f"{path}: not an image file (expected .png, .jpg or .jpeg)"
    if parts[-2] not in class_names:
        return f"{path}: unknown class {parts[-2]!r} (not among the data's classes)"
    return None


def add_to_train(splits: dict, sources: dict, extra, labels: np.ndarray, names: list[str]) -> None:
    """The extra images appended to the train split (validation and test stay as they
    were: the gate and the champion comparison see the same images as before)."""
    images, train_labels = splits["train"]
    splits["train"] = (JoinedRows([images, extra]), np.concatenate([train_labels, labels]))
    if "train" in sources:
        sources["train"] = [*sources["train"], *names]
