"""A rung trained as a distributed job of Kubeflow's training operator (a ``TFJob``,
kubeflow.org/v1): its name, the folders it shares with its launcher on the cache volume, the
manifest, and what its status conditions say. Pure: no files, no cluster.

Every worker runs ``image-finetune train-rung`` with ``train.distribution: multi_worker``
(``tf.distribute.MultiWorkerMirroredStrategy`` reads the ``TF_CONFIG`` the operator sets);
only the chief, worker 0, writes the attempt's folder.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath

from image_finetune.errors import PipelineError
from image_finetune.inference import MODEL_FILE

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "tfjobs", "TFJob"
API_VERSION = f"{GROUP}/{VERSION}"
# The operator injects TF_CONFIG into the container of this name only.
CONTAINER = "tensorflow"
WORKER = "Worker"
# The labels the operator puts on a job's pods (training-operator v1, kubeflow/common).
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"
RUN_LABEL = "pipelines.kubeflow.org/run-id"
MULTI_WORKER = "multi_worker"
CACHE_VOLUME = "cache"
# The operator's condition types; Succeeded and Failed are final.
SUCCEEDED, FAILED = "Succeeded", "Failed"
PROGRESS = ("Created", "Running", "Restarting", SUCCEEDED, FAILED)


class TrainJobError(PipelineError):
    """A distributed rung failed, timed out or was refused; the message says why and where
    its logs are."""

    exit_code = 10


@dataclass(frozen=True)
class JobPolicy:
    """How long a job may run and what is left of it afterwards.

    ``cleanPodPolicy: Running`` stops the workers still running when the job ends but keeps
    finished pods, so a failed worker's log can still be read; the operator deletes the job
    and its pods ``ttl_seconds`` after it finishes. The launcher deletes a job itself only
    when it stops waiting (timeout or cancellation): nothing is left holding GPUs."""

    backoff_limit: int = 3
    clean_pod_policy: str = "Running"
    ttl_seconds: int = 24 * 3600
    timeout_seconds: int = 48 * 3600
    poll_seconds: float = 15.0


@dataclass(frozen=True)
class JobLayout:
    """The job's folder on the cache volume, seen at the same path by the launcher and by
    every worker: the params and inputs the launcher stages, and the chief's output."""

    folder: PurePosixPath

    @property
    def params(self) -> PurePosixPath:
        return self.folder / "params.yaml"

    @property
    def data(self) -> PurePosixPath:
        return self.folder / "data"

    @property
    def warm_start(self) -> PurePosixPath:
        return self.folder / "warm_start" / MODEL_FILE

    @property
    def out(self) -> PurePosixPath:
        return self.folder / "out"


@dataclass(frozen=True)
class TrainJob:
    """One rung's job: ``workers`` pods of ``image``, each with ``gpus`` GPUs and the cache
    volume ``claim`` at ``mount`` (where ``cache`` is)."""

    name: str
    run_id: str
    index: int
    workers: int
    gpus: int
    image: str
    claim: str
    mount: str
    cache: str
    warm_start: bool = False
    policy: JobPolicy = field(default_factory=JobPolicy)

    @property
    def layout(self) -> JobLayout:
        return JobLayout(PurePosixPath(self.cache) / "jobs" / self.name)


@dataclass(frozen=True)
class JobState:
    """Where a job stands: its latest condition, and why where it ended badly."""

    phase: str
    message: str

    @property
    def finished(self) -> bool:
        return self.phase in (SUCCEEDED, FAILED)

    @property
    def succeeded(self) -> bool:
        return self.phase == SUCCEEDED


def job_name(run_id: str, index: int) -> str:
    """A DNS-1123 name, the same for every try of one run's rung (a retried launcher finds
    its job), short enough for the operator's ``<name>-worker-<i>`` pods and services."""
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:10]
    return f"image-finetune-{digest}-rung-{index}"


def label_value(text: str) -> str:
    """``text`` as a Kubernetes label value: 63 characters of [A-Za-z0-9._-], alphanumeric
    at both ends."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63].strip("-._")


def chief_selector(name: str) -> str:
    """The label selector of job ``name``'s worker 0, the chief."""
    return (f"{JOB_NAME_LABEL}={name},{REPLICA_TYPE_LABEL}={WORKER.lower()},"
            f"{REPLICA_INDEX_LABEL}=0")


def distributed_params(tree: dict) -> dict:
    """A params mapping whose training runs on every worker of a multi-worker job."""
    return {**tree, "train": {**tree.get("train", {}), "distribution": MULTI_WORKER}}


def worker_command(job: TrainJob) -> list[str]:
    """What each worker runs: the rung, from the staged params and inputs."""
    layout = job.layout
    command = ["image-finetune", "train-rung", "--params", str(layout.params),
               "--index", str(job.index), "--data", str(layout.data), "--out", str(layout.out),
               "--cache", job.cache]
    return command + (["--warm-start", str(layout.warm_start)] if job.warm_start else [])


def tfjob_manifest(job: TrainJob, namespace: str) -> dict:
    """The ``TFJob`` for ``job``: ``job.workers`` Worker replicas, restarted on failure."""
    labels = {"app": "image-finetune", RUN_LABEL: label_value(job.run_id)}
    policy = job.policy
    return {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": job.name, "namespace": namespace, "labels": labels},
        "spec": {
            "runPolicy": {"cleanPodPolicy": policy.clean_pod_policy,
                          "backoffLimit": policy.backoff_limit,
                          "ttlSecondsAfterFinished": policy.ttl_seconds},
            "tfReplicaSpecs": {WORKER: {
                "replicas": job.workers, "restartPolicy": "OnFailure",
                "template": {"metadata": {"labels": labels}, "spec": _pod_spec(job)}}},
        },
    }


def _pod_spec(job: TrainJob) -> dict:
    limits = {"nvidia.com/gpu": job.gpus} if job.gpus else {}
    container = {
        "name": CONTAINER, "image": job.image, "command": worker_command(job),
        "env": [{"name": "KERAS_BACKEND", "value": "tensorflow"},
                {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": limits},
        "volumeMounts": [{"name": CACHE_VOLUME, "mountPath": job.mount}],
    }
    return {"containers": [container], "volumes": [
        {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": job.claim}}]}


def job_state(status: dict | None) -> JobState:
    """The state a job's ``status`` shows: a final condition if one is true, else the latest
    true one (the operator keeps its conditions in the order they happened)."""
    true = [c for c in (status or {}).get("conditions") or []
            if c.get("status") == "True" and c.get("type") in PROGRESS]
    final = [c for c in true if c["type"] in (SUCCEEDED, FAILED)]
    if not (final or true):
        return JobState("Pending", "waiting for the training operator")
    latest = (final or true)[-1]
    reason = ": ".join(part for part in (latest.get("reason"), latest.get("message")) if part)
    return JobState(latest["type"], reason or latest["type"])


def failure_message(name: str, state: JobState, namespace: str) -> str:
    """Why the rung failed, and where to look."""
    return (f"TFJob {name} {state.phase.lower()}: {state.message}. Its pods stay until the "
            f"job's TTL: kubectl -n {namespace} logs -l {JOB_NAME_LABEL}={name} --prefix")


@dataclass(frozen=True)
class LogCursor:
    """How far a pod's log was relayed: the timestamp of the last line shown."""

    last: datetime | None = None


def new_log_lines(text: str, cursor: LogCursor) -> tuple[list[str], LogCursor]:
    """The lines of a timestamped log (``timestamps=True``) after ``cursor``, without their
    timestamps, and the cursor after them: overlapping reads show each line once."""
    lines, last = [], cursor.last
    for line in text.splitlines():
        stamp, _, message = line.partition(" ")
        when = _timestamp(stamp)
        if when is None:
            lines.append(line)
        elif last is None or when > last:
            lines.append(message)
            last = when
    return lines, LogCursor(last)


def _timestamp(stamp: str) -> datetime | None:
    """An RFC 3339 timestamp as the kubelet writes it (nanoseconds cut to microseconds)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", stamp)
    if match is None:
        return None
    fraction = (match[2] or "0")[:6].ljust(6, "0")
    zone = "+00:00" if match[3] == "Z" else match[3]
    return datetime.fromisoformat(f"{match[1]}.{fraction}{zone}")
