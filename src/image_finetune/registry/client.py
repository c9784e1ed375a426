"""One MLflow client per process and tracking URI, failing fast when the server is down."""

from __future__ import annotations

import functools
import os
import re

from image_finetune.config import RegistryParams
from image_finetune.errors import PipelineError, ServiceError


class RegistryError(PipelineError):
    """The registry refused an operation (no such version, nothing to roll back to, ...)."""

    exit_code = 9


def redact(uri: str) -> str:
    """A URI with any ``user:password@`` removed, fit for messages and logs."""
    return re.sub(r"//[^/@]*@", "//***@", uri)


def client_for(params: RegistryParams):
    """The MlflowClient for ``params.tracking_uri``; MLflow's fluent API points there too."""
    import mlflow

    client = _cached_client(params.tracking_uri)
    mlflow.set_tracking_uri(params.tracking_uri)
    mlflow.set_registry_uri(params.tracking_uri)
    return client


@functools.cache
def _cached_client(uri: str):
    # Without these, a client pointed at a dead server retries for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow import MlflowClient

    if uri.startswith(("http://", "https://")):
        check_server(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def check_server(uri: str) -> None:
    """Raise ServiceError, saying how to fix it, unless the server answers its health check."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as response:
            if response.status != 200:
                raise ServiceError(
                    f"MLflow server {redact(uri)} is unhealthy (HTTP {response.status})")
    except (urllib.error.URLError, OSError) as exc:
        raise ServiceError(
            f"MLflow server {redact(uri)} is unreachable ({exc}); start it "
            "(infra/services/all.sh start) or unset MLFLOW_TRACKING_URI for the local store. "
            "Outputs on disk are kept.") from exc
