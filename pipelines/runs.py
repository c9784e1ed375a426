"""Talking to a Kubeflow Pipelines API: the client (bearer token from $KFP_TOKEN, or the
in-cluster service-account token that ``kfp.Client`` finds itself), one run of a compiled
pipeline, and a recurring run of one.

A recurring run of the monitoring pipeline runs one at a time (``max_concurrency=1``: a
retrain still going when the next tick comes is not started twice) and never catches up
(``no_catchup``: after a pause, one run for the latest tick, not one per missed tick).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
CRON = re.compile(rf"{CRON_FIELD}( {CRON_FIELD}){{5}}|@(yearly|annually|monthly|weekly|daily"
                  r"|midnight|hourly|every \d+[smh])")
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
        raise ServiceError(f"Kubeflow Pipelines at {host} refused: {exc.status} "
                           f"{exc.reason}: {str(exc.body or '')[:300]}") from None
    except (HTTPError, OSError) as exc:
        raise ServiceError(f"Kubeflow Pipelines at {host} unreachable: "
                           f"{type(exc).__name__}") from None


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
            raise ConfigError(f"--cron {self.cron!r}: expected KFP's six fields, seconds "
                              "first (e.g. '0 0 3 * * *': daily at 03:00), or @daily/@hourly")
        if self.interval_seconds is not None and self.interval_seconds < MIN_INTERVAL_SECONDS:
            raise ConfigError(f"--every {self.interval_seconds}: at least "
                              f"{MIN_INTERVAL_SECONDS} seconds between runs")

    def describe(self) -> str:
        return f"cron {self.cron!r}" if self.cron else f"every {self.interval_seconds} s"


def submit_package(client, package: Path, experiment: str, namespace: str, run_name: str,
                   arguments: dict[str, Any] | None = None) -> str:
    """Start one run of a compiled pipeline; return its run id."""
    result = client.create_run_from_pipeline_package(
        str(package), arguments=arguments or {}, run_name=run_name,
        experiment_name=experiment, namespace=namespace)
    return result.run_id


def schedule_package(client, package: Path, experiment: str, namespace: str, name: str,
                     schedule: Schedule, arguments: dict[str, Any] | None = None,
                     service_account: str | None = None) -> str:
    """Create a recurring run of a compiled pipeline, one run at a time and no catch-up, in
    ``experiment`` (made if missing); return the recurring run's id."""
    found = client.create_experiment(name=experiment, namespace=namespace)
    created = client.create_recurring_run(
        experiment_id=found.experiment_id, job_name=name,
        description=f"{name}: {schedule.describe()}", cron_expression=schedule.cron,
        interval_second=schedule.interval_seconds, max_concurrency=1, no_catchup=True,
        params=arguments or {}, pipeline_package_path=str(package), enabled=True,
        service_account=service_account)
    return created.recurring_run_id
