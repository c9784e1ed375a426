"""MLflow tracking, registration and promotion.

- One parent run per pipeline run, one nested run per attempt of the ladder.
- A model that passes the final gate becomes a new version of the registered model,
  with lineage tags, the alias ``challenger``, and ``champion`` when it beats the
  current champion (McNemar on the same test images; see gate.py).
- Promotions are serialised by a lock that is itself a registered model (creating
  one is atomic in every MLflow store), and each promotion or rollback appends an
  entry to the history kept in the registered model's tags.

Works with the embedded store (``sqlite:///mlflow.db``) and with a tracking server.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from image_finetune.config import Params, RegistryParams
from image_finetune.errors import PipelineError, ServiceError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREDICTIONS_ARTIFACT = "evaluation/predictions.npz"
HISTORY_PREFIX = "promotion."
LOCK_SUFFIX = ".promotion-lock"
LOCK_STALE_SECONDS = 300


class RegistryError(PipelineError):
    """The registry refused an operation (no such version, nothing to roll back to, ...)."""

    exit_code = 9


def _client(params: RegistryParams):
    """An MlflowClient for ``params.tracking_uri`` that fails fast when the server is down."""
    # Without these, a client pointed at a dead server retries for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import mlflow
    from mlflow import MlflowClient

    uri = params.tracking_uri
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _check_server(uri: str) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as response:
            if response.status != 200:
                raise ServiceError(f"MLflow server {uri} is unhealthy (HTTP {response.status})")
    except (urllib.error.URLError, OSError) as exc:
        raise ServiceError(
            f"MLflow server {uri} is unreachable ({exc}); start it (infra/services/all.sh "
            "start) or unset MLFLOW_TRACKING_URI for the local store. Outputs on disk are kept."
        ) from exc


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_commit(root: Path) -> str:
    """The current git commit (``unknown`` outside a repository)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def new_pipeline_run_id(prefix: str = "dvc") -> str:
    """A unique, sortable id for one pipeline run."""
    return f"{prefix}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


# -- tracking ------------------------------------------------------------------------------


def _parent_run(client, params: Params, pipeline_run_id: str) -> str:
    """The parent run of a pipeline run, created on first use."""
    import mlflow

    experiment = mlflow.set_experiment(params.registry.experiment)
    found = client.search_runs([experiment.experiment_id],
                               f"tags.pipeline_run_id = '{pipeline_run_id}' and "
                               "tags.kind = 'pipeline'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment.experiment_id, run_name=pipeline_run_id,
                            tags={"pipeline_run_id": pipeline_run_id, "kind": "pipeline",
                                  "params_sha256": params.digest()})
    flat = _flatten(params.model_dump(mode="json", by_alias=True))
    for key, value in flat.items():
        client.log_param(run.info.run_id, key, str(value)[:6000])
    return run.info.run_id


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif key != "ladder":
            flat[name] = value
    return flat


def log_attempt(
    params: Params, pipeline_run_id: str, index: int, attempt_dir: Path
) -> str:
    """Log one attempt (rung params, per-epoch metrics, report, decision) as a nested run."""
    import csv

    client = _client(params.registry)
    parent = _parent_run(client, params, pipeline_run_id)
    rung = params.train.ladder[index]
    experiment_id = client.get_run(parent).info.experiment_id
    run = client.create_run(experiment_id, run_name=f"attempt-{index}-{rung.name}",
                            tags={"mlflow.parentRunId": parent, "kind": "attempt",
                                  "pipeline_run_id": pipeline_run_id})
    run_id = run.info.run_id
    for key, value in rung.model_dump(mode="json").items():
        client.log_param(run_id, f"rung.{key}", str(value))
    client.log_param(run_id, "rung.index", str(index))
    history = attempt_dir / "history.csv"
    if history.exists():
        with history.open() as handle:
            for row in csv.DictReader(handle):
                step = int(row.pop("epoch"))
                for key, value in row.items():
                    if value not in ("", None):
                        client.log_metric(run_id, key, float(value), step=step)
    metrics_file = attempt_dir / "evaluation" / "metrics.json"
    if metrics_file.exists():
        _log_metrics(client, run_id, json.loads(metrics_file.read_text()), "val_")
    decision_file = attempt_dir / "decision.json"
    if decision_file.exists():
        client.set_tag(run_id, "gate_passed", str(json.loads(decision_file.read_text())["passed"]))
        client.log_artifact(run_id, str(decision_file))
    for name in ("result.json", "history.csv"):
        if (attempt_dir / name).exists():
            client.log_artifact(run_id, str(attempt_dir / name))
    if (attempt_dir / "evaluation").exists():
        client.log_artifacts(run_id, str(attempt_dir / "evaluation"), "evaluation")
    client.set_terminated(run_id)
    return run_id


def _log_metrics(client, run_id: str, metrics: dict, prefix: str = "") -> None:
    for key, value in _flatten(metrics).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            client.log_metric(run_id, f"{prefix}{key}", float(value))


# -- the champion --------------------------------------------------------------------------


def _version_by_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _version_correct(client, version, labels: np.ndarray) -> np.ndarray:
    """Per-image correctness of a version's stored test predictions, checked against labels."""
    import mlflow

    with tempfile.TemporaryDirectory() as work:
        path = mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=PREDICTIONS_ARTIFACT, dst_path=work)
        stored = np.load(path)
        stored_labels, probabilities = stored["labels"], stored["probabilities"]
    if stored_labels.shape != labels.shape or not np.array_equal(stored_labels, labels):
        raise RegistryError(
            f"champion v{version.version} was evaluated on different test images; a paired "
            "comparison is impossible (re-evaluate the champion on this test set)")
    return probabilities.argmax(axis=1) == labels


def champion_reference(params: RegistryParams, labels: np.ndarray) -> dict | None:
    """The current champion's version and per-image correctness on these test labels."""
    client = _client(params)
    champion = _version_by_alias(client, params.model_name, CHAMPION)
    if champion is None:
        return None
    return {"version": str(champion.version),
            "correct": _version_correct(client, champion, labels)}


# -- registration and promotion ------------------------------------------------------------


@contextmanager
def promotion_lock(client, name: str, timeout: float = 120.0):
    """Serialise promotions across processes and machines (an atomic create in the registry)."""
    from mlflow.exceptions import MlflowException

    lock = f"{name}{LOCK_SUFFIX}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_registered_model(lock, tags={"acquired_at": str(time.time()),
                                                       "holder": f"{os.getpid()}"})
            break
        except MlflowException:
            try:
                held_since = float(client.get_registered_model(lock).tags.get("acquired_at", 0))
            except MlflowException:
                continue  # released between our create and get: try again at once
            if time.time() - held_since > LOCK_STALE_SECONDS:
                log.warning("breaking a stale promotion lock held since %s", held_since)
                _delete_quietly(client, lock)
                continue
            if time.monotonic() > deadline:
                raise RegistryError(f"could not acquire the promotion lock {lock!r}") from None
            time.sleep(0.2)
    try:
        yield
    finally:
        _delete_quietly(client, lock)


def _delete_quietly(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    with suppress(MlflowException):
        client.delete_registered_model(name)


def promotion_history(params: RegistryParams) -> list[dict]:
    """Every promotion and rollback, oldest first."""
    client = _client(params)
    return _history(client, params.model_name)


def _history(client, name: str) -> list[dict]:
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        return []
    entries = [json.loads(v) for k, v in tags.items() if k.startswith(HISTORY_PREFIX)]
    return sorted(entries, key=lambda e: e["seq"])


def _record(client, name: str, entry: dict) -> dict:
    seq = len(_history(client, name))
    entry = {"seq": seq, "at": _now(), "by": getpass.getuser(), **entry}
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{seq:06d}", json.dumps(entry))
    return entry


def promote(
    params: RegistryParams, version: str, reason: str,
    candidate_correct: np.ndarray | None = None, labels: np.ndarray | None = None,
    significance: float | None = None,
) -> dict:
    """Make ``version`` the champion, under the promotion lock.

    With ``candidate_correct``, the candidate is re-compared (McNemar) with whoever is
    champion once the lock is held, so a promotion that raced another never replaces
    a champion it was not tested against.
    """
    from image_finetune.gate import mcnemar_greater

    client = _client(params)
    name = params.model_name
    with promotion_lock(client, name):
        current = _version_by_alias(client, name, CHAMPION)
        if current is not None and str(current.version) == str(version):
            return {"promoted": False, "version": str(version), "reason": "already champion"}
        if current is not None and candidate_correct is not None and labels is not None:
            test = mcnemar_greater(candidate_correct, _version_correct(client, current, labels))
            if test["p_value"] >= (significance or 0.05):
                return {"promoted": False, "version": str(version),
                        "reason": f"not significantly better than champion v{current.version} "
                                  f"(p={test['p_value']:.4g})"}
        client.set_registered_model_alias(name, CHAMPION, str(version))
        entry = _record(client, name, {
            "action": "promote", "version": str(version),
            "previous": str(current.version) if current else None, "reason": reason})
    log.info("v%s is now %s of %s (previous: %s)", version, CHAMPION, name, entry["previous"])
    return {"promoted": True, **entry}


def rollback(params: RegistryParams, reason: str = "manual rollback") -> dict:
    """Restore the previous champion (the one the current champion replaced)."""
    client = _client(params)
    name = params.model_name
    with promotion_lock(client, name):
        current = _version_by_alias(client, name, CHAMPION)
        if current is None:
            raise RegistryError(f"{name} has no champion to roll back")
        promotions = [e for e in _history(client, name)
                      if e["version"] == str(current.version) and e.get("previous")]
        if not promotions:
            raise RegistryError(f"champion v{current.version} of {name} replaced nobody; "
                                "there is nothing to roll back to")
        previous = promotions[-1]["previous"]
        client.set_registered_model_alias(name, CHAMPION, previous)
        entry = _record(client, name, {"action": "rollback", "version": previous,
                                       "previous": str(current.version), "reason": reason})
    log.info("rolled back %s: champion v%s -> v%s", name, current.version, previous)
    return entry


def list_versions(params: RegistryParams) -> list[dict]:
    """Every version with its aliases and key metrics, newest first."""
    from mlflow.exceptions import MlflowException

    client = _client(params)
    try:
        # Search results do not carry aliases in every store; the registered model does.
        alias_map = client.get_registered_model(params.model_name).aliases
    except MlflowException:
        return []
    versions = client.search_model_versions(f"name = '{params.model_name}'")
    rows = []
    for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
        metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
        rows.append({
            "version": str(version.version),
            "aliases": sorted(a for a, v in alias_map.items() if str(v) == str(version.version)),
            "test_accuracy": metrics.get("test_accuracy"),
            "test_macro_f1": metrics.get("test_macro_f1"),
            "created": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC)
            .isoformat(timespec="seconds"),
            "pipeline_run_id": version.tags.get("pipeline_run_id"),
        })
    return rows


def register_candidate(
    params: Params,
    model_path: Path,
    evaluation_dir: Path,
    decision_path: Path,
    data_dir: Path,
    pipeline_run_id: str,
    lineage: dict | None = None,
) -> dict:
    """Log the final model and its evaluation; if it passed the final gate, register it as
    ``challenger`` and promote it to ``champion`` when the gate says it beats the champion."""
    import mlflow

    from image_finetune.data.canonical import load_split, manifest_digest, read_manifest
    from image_finetune.evaluate import PREDICTIONS_FILE
    from image_finetune.train import load_classifier

    decision = json.loads(Path(decision_path).read_text())
    client = _client(params.registry)
    parent = _parent_run(client, params, pipeline_run_id)
    tags = {"pipeline_run_id": pipeline_run_id, "params_sha256": params.digest(),
            "data_manifest_sha256": manifest_digest(data_dir), **(lineage or {}),
            "class_names": json.dumps(read_manifest(data_dir)["class_names"])}
    for key, value in tags.items():
        client.set_tag(parent, key, value)
    metrics = json.loads((evaluation_dir / "details.json").read_text())
    _log_metrics(client, parent, {k: v for k, v in metrics.items()
                                  if k not in ("per_class", "confusion_matrix")}, "test_")
    client.log_artifacts(parent, str(evaluation_dir), "evaluation")
    client.log_artifact(parent, str(decision_path))
    client.set_tag(parent, "final_gate_passed", str(decision["passed"]))
    if not decision["passed"]:
        client.set_terminated(parent, "FAILED")
        return {"registered": False, "promoted": False, "version": None,
                "reason": "the final gate failed: " + "; ".join(
                    r for r in decision["reasons"] if r.startswith("FAIL"))}

    model = load_classifier(model_path)
    example = np.asarray(load_split(data_dir, "test").images[:4])
    signature = mlflow.models.infer_signature(example, np.asarray(model.predict_on_batch(example)))
    with tempfile.TemporaryDirectory() as work:
        # Saved into an existing folder: mlflow.keras.log_model writes the input example
        # before it creates its own folder, and fails.
        local = Path(work) / "model"
        local.mkdir()
        mlflow.keras.save_model(model, str(local), signature=signature, input_example=example)
        client.log_artifacts(parent, str(local), "model")
    model_uri = f"runs:/{parent}/model"
    _ensure_model(client, params.registry.model_name)
    created = client.create_model_version(params.registry.model_name, model_uri,
                                          run_id=parent, tags=tags)
    version = str(_wait_ready(client, params.registry.model_name, created.version).version)
    client.set_registered_model_alias(params.registry.model_name, CHALLENGER, version)
    outcome = {"registered": True, "version": version, "model_uri": model_uri,
               "promoted": False, "reason": "promotion disabled (registry.promote: false)"}
    if params.registry.promote and decision["promote"]:
        predictions = np.load(evaluation_dir / PREDICTIONS_FILE)
        labels = predictions["labels"]
        correct = predictions["probabilities"].argmax(axis=1) == labels
        result = promote(params.registry, version,
                         "; ".join(r for r in decision["reasons"]), correct, labels,
                         params.gate.significance)
        outcome.update(promoted=result["promoted"], reason=result["reason"])
    elif params.registry.promote:
        outcome["reason"] = "not promoted: " + "; ".join(
            r for r in decision["reasons"] if r.startswith("FAIL"))
    client.set_tag(parent, "registered_version", version)
    client.set_tag(parent, "promoted", str(outcome["promoted"]))
    client.set_terminated(parent)
    log.info("registered %s v%s (%s)", params.registry.model_name, version,
             "promoted to champion" if outcome["promoted"] else outcome["reason"])
    return outcome


def _ensure_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        with suppress(MlflowException):  # created concurrently
            client.create_registered_model(name)


def _wait_ready(client, name: str, version: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        current = client.get_model_version(name, version)
        if current.status == "READY" or time.monotonic() > deadline:
            return current
        time.sleep(0.5)


def track_pipeline_run(
    params: Params, root: Path, data_dir: Path, validation_dir: Path, models_dir: Path,
    evaluation_dir: Path, decision_path: Path, pipeline_run_id: str | None = None,
) -> dict:
    """The ``register`` step of ``dvc repro``: log every attempt and the data checks under
    one parent run, then register (and maybe promote) the final model."""
    pipeline_run_id = pipeline_run_id or new_pipeline_run_id("dvc")
    summary = json.loads((models_dir / "summary.json").read_text())
    for attempt in summary["attempts"]:
        log_attempt(params, pipeline_run_id, attempt["index"],
                    models_dir / f"attempt_{attempt['index']}")
    client = _client(params.registry)
    parent = _parent_run(client, params, pipeline_run_id)
    client.log_artifact(parent, str(data_dir / "manifest.json"), "data")
    client.log_artifact(parent, str(validation_dir / "result.json"), "data")
    lineage = {"git_commit": git_commit(root)}
    lock = root / "dvc.lock"
    if lock.exists():
        from image_finetune.data.canonical import sha256_file

        lineage["dvc_lock_sha256"] = sha256_file(lock)
    outcome = register_candidate(params, models_dir / "selected" / "model.keras",
                                 evaluation_dir, decision_path, data_dir, pipeline_run_id, lineage)
    return {"pipeline_run_id": pipeline_run_id, **outcome}
