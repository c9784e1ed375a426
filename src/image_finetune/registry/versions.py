"""Registered versions: lookup by alias, their stored test results, registration, listing."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from image_finetune.config import RegistryParams
from image_finetune.engines import ENGINE_MANIFEST
from image_finetune.gate import ChampionResults
from image_finetune.monitoring.profile import PROFILE_FOLDER, PROFILE_JSON
from image_finetune.registry.client import (
    RegistryError,
    client_for,
    mlflow_error,
    mlflow_store,
    not_found,
    registry_errors,
)
from image_finetune.stats import per_image_correct

CHAMPION = "champion"
CHALLENGER = "challenger"
PREDICTIONS_ARTIFACT = "evaluation/predictions.npz"


def version_by_alias(client, name: str, alias: str):
    """The version an alias points at (None: no such model or alias)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow_error() as exc:
        if not_found(exc):
            return None
        raise


def is_alias(client, name: str, alias: str, version: str) -> bool:
    """Whether ``alias`` points at ``version`` now."""
    current = version_by_alias(client, name, alias)
    return current is not None and str(current.version) == str(version)


def version_correct(client, version, labels: np.ndarray) -> np.ndarray:
    """Per-image correctness of a version's stored test predictions, checked against labels."""
    with tempfile.TemporaryDirectory() as work:
        path = client.download_artifacts(version.run_id, PREDICTIONS_ARTIFACT, work)
        stored = np.load(path)
        stored_labels, probabilities = stored["labels"], stored["probabilities"]
    if stored_labels.shape != labels.shape or not np.array_equal(stored_labels, labels):
        raise RegistryError(
            f"champion v{version.version} was evaluated on different test images; a paired "
            "comparison is impossible (re-evaluate the champion on this test set)"
        )
    return per_image_correct(probabilities, labels)


@registry_errors
def champion_results(params: RegistryParams, labels: np.ndarray) -> ChampionResults | None:
    """The current champion's per-image correctness on these test labels (None: no champion)."""
    client = client_for(params)
    champion = version_by_alias(client, params.model_name, CHAMPION)
    if champion is None:
        return None
    return ChampionResults(str(champion.version), version_correct(client, champion, labels))


def download_version_folder(
    client, name: str, version: str, folder: str, marker: str, dest
) -> Path | None:
    """A folder logged in the run of ``name`` v``version`` (its ``marker`` file says it is
    whole), downloaded into ``dest``; None for a version registered without it."""
    found = client.get_model_version(name, str(version))
    if not found.run_id:
        return None
    listed = {Path(item.path).name for item in client.list_artifacts(found.run_id, folder)}
    if marker not in listed:
        return None
    Path(dest).mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(found.run_id, folder, str(dest)))


@registry_errors
def download_reference_profile(client, name: str, version: str, dest) -> Path | None:
    """The reference profile registered with ``name`` v``version``, downloaded into ``dest``:
    its folder (``ReferenceProfile.load`` reads it), or None for a version registered
    without one (before profiles existed). A missing version is a RegistryError."""
    return download_version_folder(client, name, version, PROFILE_FOLDER, PROFILE_JSON, dest)


ENGINE_ARTIFACT = "engine"  # steps.layout.ENGINE_FOLDER: the register step logs it there


@registry_errors
def download_engine(client, name: str, version: str, dest) -> Path | None:
    """The engine folder registered with ``name`` v``version``, downloaded into ``dest``: its
    path (engines.open_predictor reads it), or None for a version registered before engines
    existed (serve it on Keras). A missing version is a RegistryError."""
    return download_version_folder(client, name, version, ENGINE_ARTIFACT, ENGINE_MANIFEST, dest)


def download_model(client, tracking_uri: str, name: str, version: str, dst: str) -> str:
    """A registered version's model files downloaded into ``dst``; their local path. Resolved
    through ``client``: MLflow's own ``models:/`` resolution reads the process's global
    registry URI, whichever store ``client`` points at."""
    import mlflow

    source = client.get_model_version_download_uri(name, str(version))
    return mlflow.artifacts.download_artifacts(
        artifact_uri=source, dst_path=dst, tracking_uri=tracking_uri
    )


@registry_errors
def version_at(client, name: str, ref: str):
    """The version ``ref`` names: a number, or ``@alias``."""
    if ref.startswith("@"):
        version = version_by_alias(client, name, ref[1:])
        if version is None:
            raise RegistryError(f"{name} has no version with alias {ref[1:]!r}")
        return version
    return client.get_model_version(name, ref)


def registered_fit(version) -> str:
    """How the version's clients fit images of another size (versions registered before
    the tag existed were served stretched)."""
    return version.tags.get("image_fit", "resize")


def registered_class_names(version) -> list[str] | None:
    """The class names a registered version carries in its tags (None: not recorded)."""
    names = version.tags.get("class_names")
    return json.loads(names) if names else None


# What a client needs to use a registered model as it was trained, in its MLflow metadata
# (MLmodel) as well as in the version's tags (which the registry can search).
MODEL_METADATA = ("class_names", "image_fit")
REGISTRATION_WAIT_S = 300


@registry_errors
def register_version(
    client,
    tracking_uri: str,
    model_name: str,
    run_id: str,
    model,
    example: np.ndarray,
    tags: dict[str, str],
    log_model: Callable | None = None,
) -> str:
    """Log ``model`` in ``run_id`` as an MLflow LoggedModel (by ``log_model``, Keras flavor
    alone by default; class names and image fit in its metadata; requirements that install
    on Linux, macOS and GPU hosts; the run's figures logged so far are linked to it) and
    register it as a version of ``model_name``, waiting until it is READY.

    ``log_model(model, example, pip_requirements, metadata)`` logs in the active run and
    returns MLflow's ModelInfo. Idempotent per pipeline run: a retry of the same run (same
    ``pipeline_run_id`` tag) returns the version it already registered. A version that fails
    registration, or is not ready in time, is an error: it is never aliased."""
    import mlflow

    existing = _registered_by_run(client, model_name, tags["pipeline_run_id"])
    if existing is not None:
        return _ready(model_name, existing)
    metadata = {
        key: json.loads(tags[key]) if key == "class_names" else tags[key]
        for key in MODEL_METADATA
        if key in tags
    }
    with mlflow_store(tracking_uri):
        with mlflow.start_run(run_id=run_id):
            logged = (log_model or log_keras)(model, example, serving_requirements(), metadata)
        client.update_run(run_id, status="RUNNING")  # its pipeline run ends it, not this
        created = mlflow.register_model(
            logged.model_uri, model_name, tags=tags, await_registration_for=REGISTRATION_WAIT_S
        )
    # Read back: a store may fail the registration after answering the creation.
    return _ready(model_name, client.get_model_version(model_name, created.version))


def log_keras(model, example: np.ndarray, pip_requirements: list[str], metadata: dict):
    """Log ``model`` in the active run with the Keras flavor alone (its pyfunc takes uint8
    tensors), its signature inferred from ``example``."""
    import mlflow

    signature = mlflow.models.infer_signature(example, np.asarray(model.predict_on_batch(example)))
    # No input_example: MLflow 3.17's Keras flavor writes it before it creates the model's
    # folder, and fails; the signature holds the input's schema.
    return mlflow.keras.log_model(
        model,
        name="model",
        signature=signature,
        pip_requirements=pip_requirements,
        metadata=metadata,
    )


def _ready(name: str, version) -> str:
    if version.status == "READY":
        return str(version.version)
    why = version.status_message or "no reason given"
    if version.status == "FAILED_REGISTRATION":
        raise RegistryError(f"{name} v{version.version} failed registration: {why}")
    raise RegistryError(f"{name} v{version.version} is still {version.status} ({why}); not aliased")


# The distributions that provide each Keras backend, in order of preference.
BACKEND_DISTRIBUTIONS = {
    "tensorflow": ("tensorflow-cpu", "tensorflow"),
    "jax": ("jax",),
    "torch": ("torch",),
}
# tensorflow-cpu has wheels for Linux x86_64 only; everywhere else (macOS arm64, Linux
# aarch64, Windows) the same release is published as tensorflow.
CPU_ONLY_PLATFORMS = 'sys_platform == "linux" and platform_machine == "x86_64"'
OTHER_PLATFORMS = 'sys_platform != "linux" or platform_machine != "x86_64"'


def serving_requirements() -> list[str]:
    """The pinned packages a registered model needs to be served: MLflow, Keras, NumPy and
    the backend it was saved with, at the versions installed here. TensorFlow is pinned with
    environment markers so that any host installs it (see ``portable_tensorflow``). Stating
    them saves MLflow's inference of requirements, which loads the model in a subprocess."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = [f"{name}=={version(name)}" for name in ("mlflow", "keras", "numpy")]
    for name in BACKEND_DISTRIBUTIONS.get(keras_backend(), ()):
        with suppress(PackageNotFoundError):
            found = version(name)
            if name.startswith("tensorflow"):
                return [*pinned, *portable_tensorflow(found)]
            return [*pinned, f"{name}=={found}"]
    return pinned


def keras_backend() -> str:
    """The backend Keras runs on in this process, found as Keras finds it ($KERAS_BACKEND,
    else ``backend`` in keras.json under $KERAS_HOME or ~/.keras, else tensorflow) where
    Keras is not loaded: importing it would start TensorFlow (seconds) to read a setting."""
    if "keras" in sys.modules:
        return str(sys.modules["keras"].backend.backend())
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or _keras_base() / ".keras"
    with suppress(OSError, ValueError, KeyError, TypeError):
        return str(json.loads((Path(home).expanduser() / "keras.json").read_text())["backend"])
    return "tensorflow"


def _keras_base() -> Path:
    home = Path.home()
    return home if os.access(home, os.W_OK) else Path("/tmp")


def portable_tensorflow(release: str) -> list[str]:
    """TensorFlow ``release`` as two requirement lines of which exactly one applies on any
    host: the small CPU-only build on Linux x86_64, the full one elsewhere."""
    return [
        f"tensorflow-cpu=={release}; {CPU_ONLY_PLATFORMS}",
        f"tensorflow=={release}; {OTHER_PLATFORMS}",
    ]


def _registered_by_run(client, model_name: str, pipeline_run_id: str):
    """The version a pipeline run already registered (None: none yet)."""
    try:
        found = client.search_model_versions(
            f"name = '{model_name}' and tags.pipeline_run_id = '{pipeline_run_id}'"
        )
    except mlflow_error() as exc:
        if not_found(exc):
            return None  # no such model yet
        raise
    ready = [v for v in found if v.status != "FAILED_REGISTRATION"]
    return max(ready, key=lambda v: int(v.version)) if ready else None


@registry_errors
def list_versions(params: RegistryParams) -> list[dict]:
    """Every version with its aliases and key metrics, newest first."""
    client = client_for(params)
    try:
        # Search results do not carry aliases in every store; the registered model does.
        alias_map = client.get_registered_model(params.model_name).aliases
    except mlflow_error() as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []  # nothing registered yet
        raise
    versions = client.search_model_versions(f"name = '{params.model_name}'")
    rows = []
    for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
        metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
        rows.append(
            {
                "version": str(version.version),
                "aliases": sorted(
                    a for a, v in alias_map.items() if str(v) == str(version.version)
                ),
                "test_accuracy": metrics.get("test_accuracy"),
                "test_macro_f1": metrics.get("test_macro_f1"),
                "created": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
                "pipeline_run_id": version.tags.get("pipeline_run_id"),
            }
        )
    return rows
