"""The ``ingest`` step: read the data source, hold out validation (and, for a source without
splits, test), write the canonical dataset."""

from __future__ import annotations

import logging
from pathlib import Path

from image_finetune.atomic import sweep_dead_writes
from image_finetune.config import DataParams, Params
from image_finetune.data.canonical import write_dataset
from image_finetune.data.ingest import (
    add_to_train,
    canonical_splits,
    empty_classes,
    read_extra_images,
    read_source,
)
from image_finetune.data.layouts import UNSPLIT
from image_finetune.data.stable_split import BY_CONTENT
from image_finetune.errors import IngestError
from image_finetune.hashing import sha256_file
from image_finetune.inference import image_fit
from image_finetune.locate import choose_data
from image_finetune.scratch import claimed_folder

log = logging.getLogger(__name__)

# What only a source without splits uses: left out of the manifest of one with splits, whose
# dataset they do not shape.
TEST_HOLDOUT_PARAMS = {"test_fraction", "min_test_per_class"}


def ingest_data(params: Params, out: Path, root: Path) -> dict:
    """Read the data source (``data.path`` relative to ``root``, or TensorFlow Datasets: see
    :func:`choose_data`) and write train/validation/test in the canonical format to ``out``;
    return the manifest."""
    data = choose_data(params.data, root)
    source_path = Path(data.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_dead_writes(out)
    # Decoded images wait on the output's disk, not in memory, until they are written; a
    # killed ingest's are swept by the next.
    with claimed_folder(out.parent, f".{out.name}.decoded-") as scratch:
        raw = read_source(data, source_path, scratch)
        if "test" not in raw.images and UNSPLIT not in raw.images:
            raise IngestError(f"{source_path}: no test split found")
        splits, sources, holdout = canonical_splits(
            raw,
            data.validation_fraction,
            data.seed,
            data.min_validation_per_class,
            data.test_fraction,
        )
        if holdout == BY_CONTENT and (empty := empty_classes(splits, raw.class_names)):
            raise IngestError(
                f"{source_path}: some classes have too few images to split "
                f"(each image goes to test with probability data.test_fraction="
                f"{data.test_fraction} and to validation with probability "
                f"data.validation_fraction={data.validation_fraction}, by its "
                "content): bring more images of them",
                empty,
            )
        extra = add_extra(data, raw.class_names, splits, sources, scratch)
        manifest = write_dataset(
            out,
            raw.class_names,
            splits,
            {**manifest_extra(data, source_path, holdout), **extra},
            sources,
            data.shard_size,
        )
    counts = {name: info["count"] for name, info in manifest["splits"].items()}
    log.info("ingested %s -> %s: %s", source_path, out, counts)
    warn_small_split(manifest, "validation", data.min_validation_per_class)
    if holdout == BY_CONTENT:
        warn_small_split(manifest, "test", data.min_test_per_class)
    return manifest


def add_extra(data, class_names: list[str], splits: dict, sources: dict, scratch: Path) -> dict:
    """``data.extra_paths`` appended to train; what the manifest says of them (nothing when
    there are none: a run without extras writes the manifest it always wrote)."""
    if not data.extra_paths:
        return {}
    how = image_fit({"params": {"on_wrong_size": data.on_wrong_size}})
    images, labels, names = read_extra_images(
        data.extra_paths, class_names, data.image_size, how, scratch / "extra"
    )
    if images is not None:
        add_to_train(splits, sources, images, labels, names)
    log.info("extra labelled images: %d from %s", len(labels), data.extra_paths)
    return {
        "extra_training": {
            "folders": [Path(p).name for p in data.extra_paths],
            "images": len(labels),
            "per_class": {name: int((labels == i).sum()) for i, name in enumerate(class_names)},
        }
    }


def manifest_extra(data: DataParams, source_path: Path, holdout: str) -> dict:
    """The manifest's record of the source and of how the splits were made. Only the file
    name and hash: the manifest must not depend on where the data sits; nor on the shard
    size, which the manifest's splits show where it is set."""
    source = {"kind": data.source, "name": source_path.name}
    if data.source != "tfds" and source_path.is_file():
        source["sha256"] = sha256_file(source_path)
    unused = {"path", "shard_size", "extra_paths"}
    if holdout != BY_CONTENT:
        unused |= TEST_HOLDOUT_PARAMS
    extra = {
        "source": source,
        "validation_holdout": holdout,
        "params": data.model_dump(mode="json", exclude=unused),
    }
    if holdout == BY_CONTENT:  # which file went where: {split}_sources.json, pinned here
        extra["test_holdout"] = holdout
    return extra


def warn_small_split(manifest: dict, split: str, minimum: int) -> None:
    """A loud warning when some class has fewer ``split`` images than the minimum."""
    per_class = manifest["splits"][split]["per_class"]
    short = {name: n for name, n in per_class.items() if n < minimum}
    if short:
        consequence = (
            "the gate decides on noise; bring more images (each attempt's decision "
            "shows the accuracy's 95% interval)"
            if split == "validation"
            else "the test figures are noisy; bring more images (the evaluation shows "
            "the accuracy's 95% interval) or raise data.test_fraction"
        )
        log.warning(
            "%s holds fewer than data.min_%s_per_class=%d images for %d of %d classes (%s): %s",
            split,
            split,
            minimum,
            len(short),
            len(per_class),
            ", ".join(f"{k}: {v}" for k, v in list(short.items())[:5]),
            consequence,
        )
