"""The ``ingest`` step: read the data source, hold out validation, write the canonical
dataset."""

from __future__ import annotations

import logging
from pathlib import Path

from image_finetune.config import Params
from image_finetune.data.canonical import sha256_file, sweep_dead_writes, write_dataset
from image_finetune.data.ingest import canonical_splits, read_source
from image_finetune.data.scratch import claimed_folder
from image_finetune.errors import IngestError
from image_finetune.locate import choose_data

log = logging.getLogger(__name__)



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
        if "test" not in raw.images:
            raise IngestError(f"{source_path}: no test split found")
        splits, sources, holdout = canonical_splits(raw, data.validation_fraction, data.seed,
                                                    data.min_validation_per_class)
        # Only the file name and hash: the manifest must not depend on where the data sits;
        # nor on the shard size, which the manifest's splits show where it is set.
        source = {"kind": data.source, "name": source_path.name}
        if data.source != "tfds" and source_path.is_file():
            source["sha256"] = sha256_file(source_path)
        manifest = write_dataset(out, raw.class_names, splits, {
            "source": source, "validation_holdout": holdout,
            "params": data.model_dump(mode="json", exclude={"path", "shard_size"})}, sources,
            data.shard_size)
    counts = {name: info["count"] for name, info in manifest["splits"].items()}
    log.info("ingested %s -> %s: %s", source_path, out, counts)
    warn_small_validation(manifest, data.min_validation_per_class)
    return manifest


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
