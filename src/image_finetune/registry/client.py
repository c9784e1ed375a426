"""One MLflow client per process and tracking URI, failing fast when the server is down,
and the registry's errors as pipeline errors (a message and an exit code, never a
traceback, never a credential)."""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from image_finetune.config import RegistryParams
from image_finetune.errors import ConfigError, PipelineError, RegistryError, ServiceError
from image_finetune.locate import DVC_ROOT_ENV

if TYPE_CHECKING:  # mlflow is imported when an error is caught (mlflow_error)
    from mlflow.exceptions import MlflowException

F = TypeVar("F", bound=Callable)
# MLflow error codes that mean "the server or its store did not answer".
UNAVAILABLE = ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED")
REFUSED = ("UNAUTHENTICATED", "PERMISSION_DENIED")


def redact(text: str) -> str:
    """``text`` with any ``user:password@`` of a URI in it removed, fit for messages."""
    return re.sub(r"(?<=//)[^/@\s]*@", "***@", text)


SQLITE = "sqlite:///"
STORE_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def store_uri(uri: str, environ: Mapping[str, str] = os.environ) -> str:
    """``uri`` with a relative SQLite file made absolute under the DVC repository's root:
    an experiment run in a temporary copy records into the project's store, not into one
    that is deleted with the copy."""
    root = environ.get(DVC_ROOT_ENV)
    if not root or not uri.startswith(SQLITE) or uri.startswith(SQLITE + "/"):
        return uri
    return SQLITE + str(Path(root, uri.removeprefix(SQLITE)))


def local_artifact_root(uri: str) -> str | None:
    """Where a local SQLite store's artifacts go: ``mlruns`` beside its database file (what
    MLflow picks when the working directory is the database's); None for a server."""
    if not uri.startswith(SQLITE):
        return None
    return (Path(uri.removeprefix(SQLITE)).resolve().parent / "mlruns").as_uri()


def require_store_folder(uri: str) -> None:
    """Raise ConfigError when a SQLite store's folder does not exist: MLflow would create the
    folders and an empty store there, and a mistyped URI would read as an empty registry."""
    if not uri.startswith(SQLITE):
        return
    folder = Path(uri.removeprefix(SQLITE).split("?", 1)[0]).parent
    if not folder.is_dir():
        raise ConfigError(
            f"the MLflow store {redact(uri)} is in the folder {folder}, which "
            "does not exist: fix registry.tracking_uri (or MLFLOW_TRACKING_URI), "
            "or create the folder for a new store"
        )


def client_for(params: RegistryParams):
    """The MlflowClient for ``params.tracking_uri`` (registry there too). MLflow's global
    tracking URI is left alone: a process (a notebook, a test session) may talk to several
    stores, so every call here names its store."""
    uri = store_uri(params.tracking_uri)
    require_store_folder(uri)
    return _cached_client(uri)


@contextlib.contextmanager
def mlflow_store(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs set to ``uri`` for the block, for the
    fluent calls that take no client (``log_model``, ``register_model``); restored after."""
    import mlflow

    # MLflow mirrors its URIs in these variables, which registry.tracking_uri also reads:
    # they are put back as they were, unset if they were.
    saved = {name: os.environ.get(name) for name in STORE_ENV}
    uri = store_uri(uri)
    require_store_folder(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        # None resets to the default (mlflow's own code does it; its annotations omit None).
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        mlflow.set_registry_uri(None)  # type: ignore[arg-type]
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    """Raise ServiceError, saying how to fix it, unless the server answers its health check.

    The probe goes through MLflow's own HTTP layer, so it uses the client's TLS settings
    (MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_INSECURE_TLS) and credentials
    (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    hint = (
        "start it (infra/services/all.sh start) or unset MLFLOW_TRACKING_URI for the "
        "local store. Outputs on disk are kept."
    )
    creds = get_default_host_creds(uri)
    # /health is open even on a server with authentication; a read of the API is not.
    for endpoint in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            response = http_request(
                creds, endpoint, "GET", max_retries=0, timeout=5, raise_on_status=False
            )
        except (MlflowException, OSError) as exc:
            raise ServiceError(
                f"MLflow server {redact(uri)} is unreachable ({redact(str(exc))[:300]}); {hint}"
            ) from None
        if response.status_code in (401, 403):
            raise ServiceError(refused_credentials(uri, response.status_code))
        if response.status_code != 200:
            raise ServiceError(
                f"MLflow server {redact(uri)} is unhealthy (HTTP "
                f"{response.status_code} on {endpoint.split('?')[0]}); {hint}"
            )


def refused_credentials(uri: str, status: int | str) -> str:
    """What to say when the server refuses who we are."""
    return (
        f"MLflow server {redact(uri)} refused the credentials ({status}); set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
    )


def mlflow_error() -> type[MlflowException]:
    """MLflow's exception class, the one way this package catches what MLflow raises:
    ``except mlflow_error() as exc``. Imported when an error is being caught, since
    importing mlflow takes a second and the registry's importers must not pay it."""
    from mlflow.exceptions import MlflowException

    return MlflowException


def not_found(exc) -> bool:
    """Whether an MlflowException says "no such thing" (rather than "who are you?" or "the
    store did not answer", which must never read as an empty registry)."""
    return exc.error_code not in (*REFUSED, *UNAVAILABLE)


def registry_errors(func: F) -> F:
    """Turn what MLflow raises into a RegistryError (refusals) or a ServiceError (the
    server or its store did not answer), with credentials redacted."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PipelineError:
            raise  # already says what is wrong (a missing input is an OSError too)
        except mlflow_error() as exc:
            message = redact(exc.message if hasattr(exc, "message") else str(exc))[:400]
            if exc.error_code in REFUSED:
                raise ServiceError(
                    refused_credentials(
                        os.environ.get("MLFLOW_TRACKING_URI", "the tracking server"), exc.error_code
                    )
                ) from None
            if exc.error_code in UNAVAILABLE:
                raise ServiceError(
                    f"the MLflow server or its store did not answer during "
                    f"{func.__name__}: {message}"
                ) from None
            raise RegistryError(f"the registry refused {func.__name__}: {message}") from None
        except OSError as exc:
            raise ServiceError(f"the registry is unreachable ({redact(str(exc))[:300]})") from None

    return wrapper  # type: ignore[return-value]
