"""A real model registered with its engine folder behind a real MLflow tracking server: what
a serving install without the full MLflow (mlflow-skinny: no SQL store) serves from. Shared
by the install and containers tiers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from image_finetune.data.canonical import read_manifest
from image_finetune.inference import load_classifier
from tests.e2e.serving_support import engine_folder, log_engine, wait_for
from tests.support import free_port


@contextlib.contextmanager
def engine_registry(
    model: Path, data: Path, work: Path, name: str, host: str = "127.0.0.1"
) -> Iterator[dict]:
    """``model`` (trained on the canonical ``data``) registered as ``name`` v1, champion,
    with its engine folder, in a sqlite store under ``work`` (its artifacts too), served by
    ``mlflow server`` on ``host``: {"uri", "names", "version"}."""
    from mlflow import MlflowClient

    from image_finetune.registry.versions import register_version

    store = f"sqlite:///{work / 'mlflow.db'}"
    names = read_manifest(data)["class_names"]
    client = MlflowClient(store)
    experiment = client.create_experiment(name, artifact_location=str(work / "artifacts"))
    run = client.create_run(experiment).info.run_id
    version = register_version(
        client,
        store,
        name,
        run,
        load_classifier(model),
        np.zeros((2, 32, 32, 3), np.uint8),
        {"pipeline_run_id": f"{name}-1", "class_names": json.dumps(names), "image_fit": "resize"},
    )
    log_engine(store, name, version, engine_folder(model, work / "engine", names))
    client.set_registered_model_alias(name, "champion", version)
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            store,
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            "1",
            "--allowed-hosts",
            f"{host},{host}:{port}",
        ],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    try:
        wait_for(f"http://{host}:{port}/health", process)
        yield {"uri": f"http://{host}:{port}", "names": names, "version": version}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
