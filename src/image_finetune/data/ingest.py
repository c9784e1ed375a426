"""The ``ingest`` step: read a source, hold out a validation split, write the
canonical format."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from image_finetune.config import DataParams
from image_finetune.data.canonical import sha256_file, split_stratified, write_dataset
from image_finetune.data.sources import (
    RawDataset,
    read_cifar_binary,
    read_cifar_python,
    read_image_folder,
    read_tfds,
)
from image_finetune.errors import IngestError

log = logging.getLogger(__name__)


def read_source(params: DataParams, source_path: Path) -> RawDataset:
    """Decode the configured source into per-split arrays."""
    if params.source == "folder":
        return read_image_folder(
            source_path, params.image_size, params.on_wrong_size == "resize", params.max_per_class
        )
    if params.image_size != 32:
        raise IngestError(f"data.image_size={params.image_size}: {params.source} images are 32x32")
    if params.source == "cifar-python":
        return read_cifar_python(source_path, params.max_per_class)
    if params.source == "cifar-binary":
        return read_cifar_binary(source_path, params.max_per_class)
    return read_tfds(params.tfds_name, params.max_per_class)


def ingest(params: DataParams, source_path: Path, out_dir: Path) -> dict:
    """Read the source and write train/validation/test in the canonical format.

    A validation split in the source is kept as is; otherwise it is held out
    from train, stratified and seeded. Returns the manifest.
    """
    raw = read_source(params, source_path)
    if "test" not in raw.images:
        raise IngestError(f"{source_path}: no test split found")
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if "validation" in raw.images:
        splits["train"] = (raw.images["train"], raw.labels["train"])
        splits["validation"] = (raw.images["validation"], raw.labels["validation"])
        holdout = "source"
    else:
        keep, held = split_stratified(raw.labels["train"], params.validation_fraction, params.seed)
        splits["train"] = (raw.images["train"][keep], raw.labels["train"][keep])
        splits["validation"] = (raw.images["train"][held], raw.labels["train"][held])
        holdout = "stratified"
    splits["test"] = (raw.images["test"], raw.labels["test"])
    # Only the file name and hash: the manifest must not depend on where the data sits.
    source = {"kind": params.source, "name": source_path.name}
    if params.source != "tfds" and source_path.is_file():
        source["sha256"] = sha256_file(source_path)
    manifest = write_dataset(
        out_dir,
        raw.class_names,
        splits,
        {
            "source": source,
            "validation_holdout": holdout,
            "params": params.model_dump(mode="json", exclude={"path"}),
        },
    )
    counts = {name: info["count"] for name, info in manifest["splits"].items()}
    log.info("ingested %s -> %s: %s", source_path, out_dir, counts)
    return manifest
