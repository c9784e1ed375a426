"""Talking to a Kubeflow Pipelines API: the client (bearer token from $KFP_TOKEN, or the
in-cluster service-account token that ``kfp.Client`` finds itself), one run of a compiled
pipeline, a recurring run of one, and an upload (a pipeline and its versions).

A recurring run of the monitoring pipeline runs one at a time (``max_concurrency=1``: a
retrain still going when the next tick comes is not started twice) and never catches up
(``no_catchup``: after a pause, one run for the latest tick, not one per missed tick).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from image_finetune.errors import ConfigError, ServiceError

TOKEN_ENV = "KFP_TOKEN"
# Where a pod's projected service-account token for the KFP API is (audience
# pipelines.kubeflow.org), as kfp.Client reads it in a cluster when it is given no host.
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
# KFP's cron: six fields, seconds first (robfig/cron), e.g. "0 0 3 * * *" daily at 03:00.
CRON_FIELD = r"[0-9A-Za-z*?/,#LW-]+"
CRON = re.compile(
    rf"{CRON_FIELD}( {CRON_FIELD}){{5}}|@(yearly|annually|monthly|weekly|daily"
    r"|midnight|hourly|every \d+[smh])"
)
EQUALS = 1  # the KFP API filter's EQUALS operation (filter.proto)
MIN_INTERVAL_SECONDS = 300  # a monitoring pipeline that starts more often only queues up


@contextmanager
def kfp_errors(host: str) -> Iterator[None]:
    """The KFP API's refusals and network failures as a ServiceError naming the host and
    the API's status and reason (never the request's headers: they carry the token)."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        raise ServiceError(
            f"Kubeflow Pipelines at {host} refused: {exc.status} "
            f"{exc.reason}: {str(exc.body or '')[:300]}"
        ) from None
    except (HTTPError, OSError) as exc:
        raise ServiceError(
            f"Kubeflow Pipelines at {host} unreachable: {type(exc).__name__}"
        ) from None


def bearer_token() -> str | None:
    """$KFP_TOKEN, else the pod's projected service-account token where there is one (read
    afresh each time: the kubelet rotates it)."""
    if token := os.environ.get(TOKEN_ENV):
        return token
    path = Path(os.environ.get(SA_TOKEN_PATH_ENV) or SA_TOKEN_PATH)
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def connect(host: str, namespace: str):
    """A ``kfp.Client`` for ``host`` with :func:`bearer_token` as its token."""
    import kfp

    with kfp_errors(host):
        return kfp.Client(host=host, namespace=namespace, existing_token=bearer_token())


@dataclass(frozen=True)
class Schedule:
    """When a recurring run starts: a cron expression (KFP's six fields) or an interval."""

    cron: str | None = None
    interval_seconds: int | None = None

    def __post_init__(self):
        if (self.cron is None) == (self.interval_seconds is None):
            raise ConfigError("give a schedule as --cron or as --every, exactly one of them")
        if self.cron is not None and not CRON.fullmatch(self.cron.strip()):
            raise ConfigError(
                f"--cron {self.cron!r}: expected KFP's six fields, seconds "
                "first (e.g. '0 0 3 * * *': daily at 03:00), or @daily/@hourly"
            )
        if self.interval_seconds is not None and self.interval_seconds < MIN_INTERVAL_SECONDS:
            raise ConfigError(
                f"--every {self.interval_seconds}: at least "
                f"{MIN_INTERVAL_SECONDS} seconds between runs"
            )

    def describe(self) -> str:
        return f"cron {self.cron!r}" if self.cron else f"every {self.interval_seconds} s"


def submit_package(
    client,
    package: Path,
    experiment: str,
    namespace: str,
    run_name: str,
    arguments: dict[str, Any] | None = None,
) -> str:
    """Start one run of a compiled pipeline; return its run id."""
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments=arguments or {},
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
    )
    return result.run_id


def schedule_package(
    client,
    package: Path,
    experiment: str,
    namespace: str,
    name: str,
    schedule: Schedule,
    arguments: dict[str, Any] | None = None,
    service_account: str | None = None,
) -> str:
    """Create a recurring run of a compiled pipeline, one run at a time and no catch-up, in
    ``experiment`` (made if missing); return the recurring run's id."""
    found = client.create_experiment(name=experiment, namespace=namespace)
    created = client.create_recurring_run(
        experiment_id=found.experiment_id,
        job_name=name,
        description=f"{name}: {schedule.describe()}",
        cron_expression=schedule.cron,
        interval_second=schedule.interval_seconds,
        max_concurrency=1,
        no_catchup=True,
        params=arguments or {},
        pipeline_package_path=str(package),
        enabled=True,
        service_account=service_account,
    )
    return created.recurring_run_id


@dataclass(frozen=True)
class Uploaded:
    """What an upload made: the pipeline (new or found) and its version."""

    pipeline_id: str
    version_id: str
    name: str
    version: str
    new_pipeline: bool

    def describe(self) -> str:
        made = "new pipeline" if self.new_pipeline else "new version of pipeline"
        return (
            f"uploaded {made} {self.name!r} ({self.pipeline_id}), version "
            f"{self.version!r} ({self.version_id})"
        )


def default_version(git_commit: str, now: datetime | None = None) -> str:
    """A version name that sorts by time and names the source: ``<commit>-<UTC time>``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{git_commit[:12]}-{stamp}"


def find_pipeline(client, name: str, namespace: str | None) -> str | None:
    """The id of the pipeline named ``name`` (in ``namespace``, or shared), None if none."""
    wanted = json.dumps(
        {"predicates": [{"operation": EQUALS, "key": "display_name", "stringValue": name}]}
    )
    found = client.list_pipelines(filter=wanted, namespace=namespace).pipelines or []
    if len(found) > 1:
        raise ConfigError(
            f"{len(found)} pipelines are named {name!r}: name one in the KFP UI "
            "uniquely, or upload under another --name"
        )
    return found[0].pipeline_id if found else None


def upload_package(
    client,
    package: Path,
    name: str,
    version: str,
    description: str | None = None,
    namespace: str | None = None,
) -> Uploaded:
    """Upload a compiled pipeline: a new pipeline named ``name`` (whose first version is
    ``version``) where none is, else a new version ``version`` of it."""
    pipeline_id = find_pipeline(client, name, namespace)
    new_pipeline = pipeline_id is None
    if pipeline_id is None:
        pipeline = client.upload_pipeline(
            str(package), pipeline_name=name, description=description, namespace=namespace
        )
        pipeline_id = pipeline.pipeline_id
        # The server names the first version after the pipeline: add the named one to it.
    made = client.upload_pipeline_version(
        str(package),
        pipeline_version_name=version,
        pipeline_id=pipeline_id,
        description=description,
    )
    return Uploaded(pipeline_id, made.pipeline_version_id, name, version, new_pipeline)
