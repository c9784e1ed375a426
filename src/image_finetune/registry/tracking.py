"""MLflow tracking: one parent run per pipeline run, one nested run per attempt of the
ladder, batched metrics and parameters, artifacts."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from image_finetune.config import Params
from image_finetune.registry.client import local_artifact_root, mlflow_error, store_uri

log = logging.getLogger(__name__)

BATCH = 900  # MLflow accepts up to 1,000 metrics and 100 params per batch call
PARAM_BATCH = 100
PARAM_VALUE_LIMIT = 6000
SECRET_PARAMS = ("registry.tracking_uri",)  # may carry credentials


def _flatten_params(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten_params(value, f"{name}."))
        elif key != "ladder":  # rungs are logged with their attempts
            flat[name] = str(value)[:PARAM_VALUE_LIMIT]
    return flat


def log_params(client, run_id: str, params: dict[str, str]) -> None:
    """Log parameters in batches."""
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), PARAM_BATCH):
        client.log_batch(run_id, params=items[start : start + PARAM_BATCH])


def log_metric_values(client, run_id: str, values: dict[str, float], step: int = 0) -> None:
    """Log metrics in batches (one call per up to 900 values, not one per value)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in values.items()]
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, metrics=items[start : start + BATCH])


def log_epochs(client, run_id: str, rows: list[dict]) -> None:
    """Per-epoch figures (a training history's rows, ``epoch`` being the step)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(key, float(value), now, int(row["epoch"]))
        for row in rows
        for key, value in row.items()
        if key != "epoch" and value not in ("", None)
    ]
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, metrics=items[start : start + BATCH])


def experiment_named(client, name: str, tracking_uri: str):
    """The experiment called ``name``, created on first use (also by a concurrent run); a
    local store's artifacts go beside its database, wherever the process runs."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        root = local_artifact_root(store_uri(tracking_uri))
        location = f"{root}/{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}" if root else None
        try:
            client.create_experiment(name, artifact_location=location)
        except mlflow_error() as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = client.get_experiment_by_name(name)
    return experiment


def parent_run(client, params: Params, pipeline_run_id: str) -> str:
    """The parent run of a pipeline run, created (with every parameter) on first use."""
    experiment = experiment_named(client, params.registry.experiment, params.registry.tracking_uri)
    found = client.search_runs(
        [experiment.experiment_id],
        f"tags.pipeline_run_id = '{pipeline_run_id}' and tags.kind = 'pipeline'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment.experiment_id,
        run_name=pipeline_run_id,
        tags={
            "pipeline_run_id": pipeline_run_id,
            "kind": "pipeline",
            "params_sha256": params.digest(),
        },
    )
    flat = _flatten_params(params.model_dump(mode="json", by_alias=True))
    log_params(client, run.info.run_id, {k: v for k, v in flat.items() if k not in SECRET_PARAMS})
    return run.info.run_id


def nested_run(client, parent_id: str, name: str, tags: dict[str, str]) -> str:
    """A run nested under ``parent_id`` in the parent's experiment."""
    experiment_id = client.get_run(parent_id).info.experiment_id
    run = client.create_run(
        experiment_id, run_name=name, tags={"mlflow.parentRunId": parent_id, **tags}
    )
    return run.info.run_id


def nested_run_exists(client, parent_id: str, tag: str, value: str) -> bool:
    """Whether a finished run nested under ``parent_id`` carries ``tag = value``."""
    experiment_id = client.get_run(parent_id).info.experiment_id
    found = client.search_runs(
        [experiment_id],
        f"tags.mlflow.parentRunId = '{parent_id}' and tags.{tag} = '{value}'",
        max_results=5,
    )
    return any(run.info.status == "FINISHED" for run in found)


def end_run_quietly(client, run_id: str, status: str) -> None:
    """End a run with ``status``, ignoring a store that is gone (the caller is failing)."""
    try:
        client.set_terminated(run_id, status)
    except Exception as exc:  # the original failure matters more than this one
        log.warning("could not mark run %s %s: %s", run_id, status, exc)


def log_files(
    client,
    run_id: str,
    files: list[Path],
    folders: dict[str, Path] | None = None,
    files_under: str | None = None,
) -> None:
    """Upload the files that exist, and whole folders under their artifact paths."""
    for path in files:
        if path.exists():
            client.log_artifact(run_id, str(path), files_under)
    for artifact_path, folder in (folders or {}).items():
        if folder.exists():
            client.log_artifacts(run_id, str(folder), artifact_path)


@dataclass(frozen=True)
class DatasetRef:
    """One dataset a run read, as MLflow records it (``mlflow.log_input``'s entity)."""

    name: str
    digest: str  # MLflow keeps at most 36 characters
    source: str  # a URI: file:///..., s3://..., tfds:cifar10
    context: str  # training, validation, test
    profile: dict


def source_type(uri: str) -> str:
    """MLflow's source type for a dataset URI (``local`` for files)."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else "file"
    return {"file": "local", "https": "http"}.get(scheme, scheme)


def log_dataset_inputs(client, run_id: str, refs: list[DatasetRef]) -> None:
    """Record the datasets as the run's inputs, each with its context tag (a retry records
    nothing twice: the store keeps one input per dataset and context)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = [
        DatasetInput(
            Dataset(
                name=ref.name,
                digest=ref.digest[:36],
                source_type=source_type(ref.source),
                source=json.dumps({"uri": ref.source}),
                profile=json.dumps(ref.profile),
            ),
            tags=[InputTag(MLFLOW_DATASET_CONTEXT, ref.context)],
        )
        for ref in refs
    ]
    client.log_inputs(run_id, datasets=inputs)
