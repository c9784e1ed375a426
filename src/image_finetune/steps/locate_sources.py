"""The ``locate-sources`` stage: which data and backbone weights the run uses (a local copy
or a public source, see image_finetune.locate) and a hash of their content. DVC runs it every
time and re-runs ingest and train when its record changes, so a changed file, another
choice or a copy elsewhere (an experiment's temporary copy) is seen as what it is."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from image_finetune.config import NAMED_WEIGHTS, DataParams, ModelParams, Params
from image_finetune.data.labels_file import labels_content_sha256
from image_finetune.errors import MissingInputError
from image_finetune.hashing import sha256_file
from image_finetune.locate import choose_data, choose_weights

log = logging.getLogger(__name__)


def locate_sources(params: Params, root: Path, out: Path) -> dict:
    """Choose the data and weights for ``params`` (relative paths against ``root``) and
    write what was chosen, by name and content hash, to ``out``."""
    record = {
        "data": data_record(choose_data(params.data, root)),
        "weights": weights_record(choose_weights(params.model, root)),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    log.info("sources: data %s, weights %s", record["data"], record["weights"])
    return record


def data_record(data: DataParams) -> dict:
    """The chosen data: a public dataset by name, or a local copy by name and content (never
    its place, which differs between machines and experiment copies); a labels file's
    content is its own and that of every image it lists."""
    extra = extra_record(data)
    if data.source == "tfds":
        return {"source": "tfds", "name": data.tfds_name, **extra}
    path = Path(data.path)
    if not path.exists():
        raise MissingInputError(
            f"{path}: data source not found (set data.path or "
            "$IMAGE_FINETUNE_DATA, or data.source: auto to download)"
        )
    digest = labels_content_sha256(path) if data.source == "labels" else content_sha256(path)
    return {"source": data.source, "name": path.name, "sha256": digest, **extra}


def extra_record(data: DataParams) -> dict:
    """The extra labelled folders (``data.extra_paths``), by name and content: a new export
    into the same folder re-runs ingest. Nothing when there are none (the record of a run
    without extras is what it always was). DVC runs this stage every time, so the key needs
    no place in its params."""
    if not data.extra_paths:
        return {}
    missing = [p for p in data.extra_paths if not Path(p).is_dir()]
    if missing:
        raise MissingInputError(f"data.extra_paths: no folder at {', '.join(missing)}")
    return {
        "extra": [
            {"name": Path(p).name, "sha256": content_sha256(Path(p))} for p in data.extra_paths
        ]
    }


def weights_record(model: ModelParams) -> dict:
    """The chosen weights: ``imagenet``/``none`` for the backbone, or a file by content."""
    if model.weights in NAMED_WEIGHTS:
        return {"backbone": model.backbone, "weights": model.weights}
    path = Path(model.weights)
    if not path.is_file():
        raise MissingInputError(
            f"{path}: backbone weights not found (set model.weights or "
            "$IMAGE_FINETUNE_WEIGHTS; 'auto' downloads ImageNet weights)"
        )
    return {
        "backbone": model.backbone,
        "weights": "file",
        "name": path.name,
        "sha256": sha256_file(path),
    }


def content_sha256(path: Path) -> str:
    """A file's SHA-256, or a folder's: over each file's relative name and SHA-256."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()
