"""A rung trained as a distributed job: a ``TFJob`` of Kubeflow's training operator
(kubeflow.org/v1) or a ``TrainJob`` of Kubeflow Trainer v2 (trainer.kubeflow.org/v1alpha1,
run by a ``ClusterTrainingRuntime``: infra/k8s/trainer/): its name, the folders it shares with
its launcher on the cache volume, the manifests, and what their status conditions say. Pure:
no files, no cluster.

Every worker runs ``image-finetune train-rung`` with ``train.distribution: multi_worker``
(``tf.distribute.MultiWorkerMirroredStrategy``). The training operator sets ``TF_CONFIG`` on
each TFJob worker; Trainer v2 has no TensorFlow plugin, so a TrainJob's workers get the
list of worker addresses (JobSet's stable pod host names) and make ``TF_CONFIG`` from it and
their Indexed Job's completion index (``image_finetune.training.distribute``). Only the
chief, worker 0, writes the attempt's folder.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath

from image_finetune.errors import TrainJobError
from image_finetune.file_names import MODEL_FILE

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
# The operator's condition types; Succeeded and Failed are final (Trainer v2: Complete).
SUCCEEDED, FAILED = "Succeeded", "Failed"
COMPLETE = "Complete"
PROGRESS = ("Created", "Running", "Restarting", "Suspended", SUCCEEDED, COMPLETE, FAILED)
# Kubeflow Trainer v2: a TrainJob runs as a JobSet of the same name; its ClusterTrainingRuntime
# (infra/k8s/trainer/) has one replicated job, `node`, an Indexed Job of numNodes pods.
TRAINER_GROUP, TRAINER_VERSION = "trainer.kubeflow.org", "v1alpha1"
TRAINER_NODE = "node"
WORKER_HOSTS_ENV = "IMAGE_FINETUNE_WORKER_HOSTS"
WORKER_PORT = 2222
MANAGER = "image-finetune.dev/launcher"  # who owns the TrainJob's runtime patch


@dataclass(frozen=True)
class JobKind:
    """One kind of distributed job: its API and the labels of its chief's pod."""

    launcher: str
    group: str
    version: str
    plural: str
    kind: str
    job_name_label: str
    chief_labels: tuple[tuple[str, str], ...]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def chief_selector(self, name: str) -> str:
        """The label selector of job ``name``'s worker 0, the chief."""
        return ",".join(
            f"{key}={value}" for key, value in ((self.job_name_label, name), *self.chief_labels)
        )


TFJOB = JobKind(
    "tfjob",
    GROUP,
    VERSION,
    PLURAL,
    KIND,
    JOB_NAME_LABEL,
    ((REPLICA_TYPE_LABEL, WORKER.lower()), (REPLICA_INDEX_LABEL, "0")),
)
# JobSet's labels on every pod, and the Indexed Job's on each pod.
TRAINJOB = JobKind(
    "trainjob",
    TRAINER_GROUP,
    TRAINER_VERSION,
    "trainjobs",
    "TrainJob",
    "jobset.sigs.k8s.io/jobset-name",
    (
        ("jobset.sigs.k8s.io/replicatedjob-name", TRAINER_NODE),
        ("batch.kubernetes.io/job-completion-index", "0"),
    ),
)
JOB_KINDS = {kind.launcher: kind for kind in (TFJOB, TRAINJOB)}


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
class Placement:
    """Where a job's pods may run: tolerations of node taints (Kubernetes Toleration
    mappings) and the node labels they require (GPU nodes are usually tainted)."""

    tolerations: tuple[dict, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()

    def pod_fields(self) -> dict:
        """The pod spec's ``tolerations`` and ``nodeSelector``, where there are any."""
        fields = {"tolerations": [dict(t) for t in self.tolerations]} if self.tolerations else {}
        return {
            **fields,
            **({"nodeSelector": dict(self.node_selector)} if self.node_selector else {}),
        }


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
    placement: Placement = field(default_factory=Placement)

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
    """The label selector of TFJob ``name``'s worker 0, the chief."""
    return TFJOB.chief_selector(name)


def job_kind(launcher: str) -> JobKind:
    """The job kind a launcher name (``tfjob``, ``trainjob``) stands for."""
    if launcher not in JOB_KINDS:
        raise TrainJobError(f"launcher {launcher!r}: expected one of {', '.join(JOB_KINDS)}")
    return JOB_KINDS[launcher]


def distributed_params(tree: dict) -> dict:
    """A params mapping whose training runs on every worker of a multi-worker job."""
    return {**tree, "train": {**tree.get("train", {}), "distribution": MULTI_WORKER}}


def worker_command(job: TrainJob) -> list[str]:
    """What each worker runs: the rung, from the staged params and inputs."""
    layout = job.layout
    command = [
        "image-finetune",
        "train-rung",
        "--params",
        str(layout.params),
        "--index",
        str(job.index),
        "--data",
        str(layout.data),
        "--out",
        str(layout.out),
        "--cache",
        job.cache,
    ]
    return command + (["--warm-start", str(layout.warm_start)] if job.warm_start else [])


def tfjob_manifest(job: TrainJob, namespace: str) -> dict:
    """The ``TFJob`` for ``job``: ``job.workers`` Worker replicas, restarted on failure."""
    labels = {"app": "image-finetune", RUN_LABEL: label_value(job.run_id)}
    policy = job.policy
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": job.name, "namespace": namespace, "labels": labels},
        "spec": {
            "runPolicy": {
                "cleanPodPolicy": policy.clean_pod_policy,
                "backoffLimit": policy.backoff_limit,
                "ttlSecondsAfterFinished": policy.ttl_seconds,
            },
            "tfReplicaSpecs": {
                WORKER: {
                    "replicas": job.workers,
                    "restartPolicy": "OnFailure",
                    "template": {"metadata": {"labels": labels}, "spec": _pod_spec(job)},
                }
            },
        },
    }


def worker_hosts(job: TrainJob) -> list[str]:
    """The TrainJob's workers as JobSet names them: ``<job>-node-0-<i>`` under the job's
    headless Service (the JobSet's subdomain), each listening on :data:`WORKER_PORT`."""
    return [f"{job.name}-{TRAINER_NODE}-0-{i}.{job.name}:{WORKER_PORT}" for i in range(job.workers)]


def trainjob_manifest(job: TrainJob, namespace: str, runtime: str) -> dict:
    """The Trainer v2 ``TrainJob`` for ``job``, run by the ClusterTrainingRuntime ``runtime``:
    ``job.workers`` nodes of ``job.image``, the cache volume patched into each node's pod."""
    labels = {"app": "image-finetune", RUN_LABEL: label_value(job.run_id)}
    env = [*_ENV, {"name": WORKER_HOSTS_ENV, "value": ",".join(worker_hosts(job))}]
    pod = {
        "volumes": [_cache_volume(job)],
        **job.placement.pod_fields(),
        "containers": [{"name": TRAINER_NODE, "volumeMounts": [_cache_mount(job)]}],
    }
    return {
        "apiVersion": TRAINJOB.api_version,
        "kind": TRAINJOB.kind,
        "metadata": {"name": job.name, "namespace": namespace, "labels": labels},
        "spec": {
            "runtimeRef": {
                "name": runtime,
                "apiGroup": TRAINER_GROUP,
                "kind": "ClusterTrainingRuntime",
            },
            "activeDeadlineSeconds": job.policy.timeout_seconds,
            "trainer": {
                "image": job.image,
                "command": worker_command(job),
                "numNodes": job.workers,
                "env": env,
                "resourcesPerNode": _resources(job),
            },
            "runtimePatches": [
                {
                    "manager": MANAGER,
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [
                                    {
                                        "name": TRAINER_NODE,
                                        "template": {
                                            "spec": {
                                                "template": {
                                                    "metadata": {"labels": labels},
                                                    "spec": pod,
                                                }
                                            }
                                        },
                                    }
                                ]
                            }
                        }
                    },
                }
            ],
        },
    }


_ENV = (
    {"name": "KERAS_BACKEND", "value": "tensorflow"},
    {"name": "PYTHONUNBUFFERED", "value": "1"},
)


def _resources(job: TrainJob) -> dict:
    limits = {"nvidia.com/gpu": job.gpus} if job.gpus else {}
    return {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": limits}


def _cache_volume(job: TrainJob) -> dict:
    return {"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": job.claim}}


def _cache_mount(job: TrainJob) -> dict:
    return {"name": CACHE_VOLUME, "mountPath": job.mount}


def job_manifest(job: TrainJob, namespace: str, launcher: str, runtime: str) -> dict:
    """The manifest ``launcher`` creates for ``job``."""
    if job_kind(launcher) is TRAINJOB:
        return trainjob_manifest(job, namespace, runtime)
    return tfjob_manifest(job, namespace)


def _pod_spec(job: TrainJob) -> dict:
    container = {
        "name": CONTAINER,
        "image": job.image,
        "command": worker_command(job),
        "env": list(_ENV),
        "resources": _resources(job),
        "volumeMounts": [_cache_mount(job)],
    }
    return {
        "containers": [container],
        "volumes": [_cache_volume(job)],
        **job.placement.pod_fields(),
    }


def job_state(status: dict | None) -> JobState:
    """The state a job's ``status`` shows: a final condition if one is true, else the latest
    true one (the operator keeps its conditions in the order they happened)."""
    true = [
        c
        for c in (status or {}).get("conditions") or []
        if c.get("status") == "True" and c.get("type") in PROGRESS
    ]
    final = [c for c in true if c["type"] in (SUCCEEDED, COMPLETE, FAILED)]
    if not (final or true):
        return JobState("Pending", "waiting for the training operator")
    latest = (final or true)[-1]
    reason = ": ".join(part for part in (latest.get("reason"), latest.get("message")) if part)
    phase = SUCCEEDED if latest["type"] == COMPLETE else latest["type"]
    return JobState(phase, reason or latest["type"])


def failure_message(name: str, state: JobState, namespace: str, kind: JobKind = TFJOB) -> str:
    """Why the rung failed, and where to look."""
    return (
        f"{kind.kind} {name} {state.phase.lower()}: {state.message}. Its pods stay until "
        f"the job's TTL: kubectl -n {namespace} logs -l {kind.job_name_label}={name} "
        "--prefix"
    )


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
