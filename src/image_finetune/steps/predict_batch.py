"""The ``predict-batch`` step: batched inference over a folder or archive of images, to
a CSV. Unreadable files are listed with their error, never dropped. A registered version
with an engine folder runs on the chosen engine (IMAGE_FINETUNE_ENGINE, ``--engine``), at the
precision its manifest serves; anything else on Keras."""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from image_finetune.config import Params
from image_finetune.data.files import walk
from image_finetune.data.images import decode_image
from image_finetune.inference import (
    class_names_or_indices,
    image_fit,
    load_classifier,
    model_input_size,
    top_k,
)
from image_finetune.registry.client import client_for, registry_errors
from image_finetune.registry.versions import registered_class_names, version_at
from image_finetune.serving.models import load_version

log = logging.getLogger(__name__)
COLUMNS = ["file", "predicted", "probability", "top_k", "error"]


def predict_batch(
    params: Params,
    source: Path,
    out: Path,
    model: str = "",
    data_manifest: Path | None = None,
    batch_size: int = 256,
    k: int = 3,
    engine: str | None = None,
) -> int:
    """Label every image under ``source`` with ``model`` (``models:/name@alias``,
    ``runs:/...`` or a .keras file; default: the registry's champion); write ``out``.
    Class names and how images of another size are fitted come from the registered version,
    or for a bare file from ``data_manifest``. ``engine``: engines.resolve_engine's choice
    (None: IMAGE_FINETUNE_ENGINE, else auto). Returns the number of rows."""
    from image_finetune.engines import resolve_engine

    uri = model or f"models:/{params.registry.model_name}@champion"
    classifier, names, how = _load(params, uri, resolve_engine(engine))
    log.info(
        "predict-batch: %s on %s %s",
        uri,
        getattr(classifier, "engine", "tensorflow"),
        getattr(classifier, "precision", "fp32"),
    )
    if names is None and data_manifest is not None and data_manifest.exists():
        manifest = json.loads(data_manifest.read_text())
        names, how = manifest["class_names"], image_fit(manifest)
    names = class_names_or_indices(names, classifier)
    size = model_input_size(classifier)
    rows: list[dict] = []
    pending: list[tuple[str, np.ndarray]] = []
    refused: list[str] = []  # names, links and sizes the walk refused: listed, not dropped
    for entry in tqdm(walk(source, refused), desc="predict", unit="img"):
        if entry.is_folder:
            continue  # every file is tried: one that is not PNG or JPEG gets its error row
        try:
            pending.append(
                (str(entry.path), decode_image(entry.read(), str(entry.path), size, how))
            )
        except ValueError as exc:
            rows.append(_error_row(str(entry.path), str(exc)))
        if len(pending) >= batch_size:
            rows += _label(classifier, pending, names, k)
    rows += _label(classifier, pending, names, k)
    rows += [_error_row(problem.split(": ", 1)[0], problem) for problem in refused]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["file"]))
    return len(rows)


def _error_row(file: str, error: str) -> dict:
    return {"file": file, "predicted": "", "probability": "", "top_k": "", "error": error}


def _label(classifier, pending: list[tuple[str, np.ndarray]], names: list[str], k: int):
    """The CSV rows of a batch of decoded images (the batch is emptied)."""
    if not pending:
        return []
    probabilities = np.asarray(classifier.predict_on_batch(np.stack([a for _, a in pending])))
    rows = [
        {
            "file": name,
            "predicted": best[0]["class"],
            "probability": best[0]["probability"],
            "top_k": " ".join(f"{b['class']}:{b['probability']:.4f}" for b in best),
            "error": "",
        }
        for (name, _), best in zip(pending, top_k(probabilities, names, k), strict=True)
    ]
    pending.clear()
    return rows


@registry_errors
def _load(params: Params, uri: str, engine: str) -> tuple[object, list[str] | None, str]:
    """The model behind a URI or file, with the class names and image fit its registry
    version carries (a file or run carries neither: stretched, names unknown); a registered
    version on ``engine`` where it has an engine folder."""
    if not uri.startswith(("models:/", "runs:/")):
        return load_classifier(Path(uri)), None, "resize"
    client = client_for(params.registry)  # fails fast when the store is not there
    if not uri.startswith("models:/"):
        return _run_model(client, uri), None, "resize"
    name, _, ref = uri.removeprefix("models:/").replace("@", "/@").partition("/")
    registry = params.registry.model_copy(update={"model_name": name})
    version = version_at(client, name, ref)
    loaded = load_version(registry, version, engine)
    return loaded.model, registered_class_names(version), loaded.image_fit


def _run_model(client, uri: str):
    import mlflow

    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    with tempfile.TemporaryDirectory(prefix="image-finetune-model-") as work:
        return mlflow.keras.load_model(client.download_artifacts(run_id, path, work))
