"""The ``ingest`` step: read the data source, hold out validation, write the canonical
dataset."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from image_finetune.config import Params
from image_finetune.data.canonical import sha256_file, write_dataset
from image_finetune.data.ingest import (
    add_to_train,
    canonical_splits,
    read_extra_images,
    read_source,
)
from image_finetune.errors import IngestError
from image_finetune.inference import image_fit
from image_finetune.locate import choose_data

log = logging.getLogger(__name__)



def ingest_data(params: Params, out: Path, root: Path) -> dict:
    """Read the data source (``data.path`` relative to ``root``, or TensorFlow Datasets: see
    :func:`choose_data`) and write train/validation/test in the canonical format to ``out``;
    return the manifest."""
    data = choose_data(params.data, root)
    source_path = Path(data.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Decoded images wait on the output's disk, not in memory, until they are written.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.decoded-", dir=out.parent) as scratch:
        raw = read_source(data, source_path, Path(scratch))
        if "test" not in raw.images:
            raise IngestError(f"{source_path}: no test split found")
        splits, sources, holdout = canonical_splits(raw, data.validation_fraction, data.seed,
                                                    data.min_validation_per_class)
        extra = _add_extra(data, raw.class_names, splits, sources, Path(scratch))
        # Only the file name and hash: the manifest must not depend on where the data sits;
        # nor on the shard size, which the manifest's splits show where it is set.
        source = {"kind": data.source, "name": source_path.name}
        if data.source != "tfds" and source_path.is_file():
            source["sha256"] = sha256_file(source_path)
        manifest = write_dataset(out, raw.class_names, splits, {
            "source": source, "validation_holdout": holdout, **extra,
            "params": data.model_dump(mode="json",
                                      exclude={"path", "shard_size", "extra_paths"})},
            sources, data.shard_size)
    counts = {name: info["count"] for name, info in manifest["splits"].items()}
    log.info("ingested %s -> %s: %s", source_path, out, counts)
    warn_small_validation(manifest, data.min_validation_per_class)
    return manifest


def _add_extra(data, class_names: list[str], splits: dict, sources: dict, scratch: Path) -> dict:
    """``data.extra_paths`` appended to train; what the manifest says of them (nothing when
    there are none: a run without extras writes the manifest it always wrote)."""
    if not data.extra_paths:
        return {}
    how = image_fit({"params": {"on_wrong_size": data.on_wrong_size}})
    images, labels, names = read_extra_images(data.extra_paths, class_names, data.image_size,
                                              how, scratch / "extra")
    if images is not None:
        add_to_train(splits, sources, images, labels, names)
    log.info("extra labelled images: %d from %s", len(labels), data.extra_paths)
    return {"extra_training": {"folders": [Path(p).name for p in data.extra_paths],
                               "images": len(labels),
                               "per_class": {name: int((labels == i).sum())
                                             for i, name in enumerate(class_names)}}}


def warn_small_validation(manifest: dict, minimum: int) -> None:
    """A loud warning when some class has fewer validation images than the minimum."""
    per_class = manifest["splits"]["validation"]["per_class"]
    short = {name: n for name, n in per_class.items() if n < minimum}
    if short:
        log.warning("validation holds fewer than data.min_validation_per_class=%d images for "
                    "%d of %d classes (%s): the gate decides on noise; bring more images "
                    "(each attempt's decision shows the accuracy's 95%% interval)", minimum,
                    len(short), len(per_class),
                    ", ".join(f"{k}: {v}" for k, v in list(short.items())[:5]))
