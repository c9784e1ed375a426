"""Where the pipeline's steps run, chosen when it is compiled: the images, the GPUs of the
training tasks and the workers of each (more than one: a distributed job that the task
launches, a ``TFJob`` or a Trainer v2 ``TrainJob``), where the GPU tasks may be scheduled
(tolerations of the GPU nodes' taints, node selectors), how long a task may run and how often
training is retried, the Kubernetes Secret that gives the MLflow steps their credentials and
the PersistentVolumeClaim that keeps the training cache between tasks and runs."""

import re
from dataclasses import dataclass, field

from kfp import dsl, kubernetes
from kfp.dsl.pipeline_task import PipelineTask

from image_finetune.components.runtime import configured_image, cpu_image, gpu_image
from image_finetune.errors import ConfigError

CREDENTIALS_SECRET = "mlflow-client"  # as infra/k8s/base/serving.yaml: the same server, keys
CACHE_PVC = "image-finetune-cache"  # infra/k8s/components/pipeline/pipeline-cache.yaml
CACHE_MOUNT = "/cache"
# The Secret's keys are the variables they become, as in `mlflow-client`, which the serving
# Deployment reads whole. Each is optional: a server wants a token or a user and password,
# and the S3 keys only matter where MLflow's artifacts are on S3.
CREDENTIAL_VARIABLES = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_S3_ENDPOINT_URL",
)
# GPU nodes are usually tainted so that only GPU pods land there; the NVIDIA device plugin's
# and the clouds' taint key (GKE: nvidia.com/gpu=present:NoSchedule) is tolerated by default.
GPU_TOLERATION = "nvidia.com/gpu:NoSchedule"
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# A qualified Kubernetes name (label key or taint key): an optional DNS prefix and a name.
QUALIFIED_NAME = re.compile(
    r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
LAUNCHERS = ("tfjob", "trainjob")  # the training operator v1's TFJob, Kubeflow Trainer v2's


@dataclass(frozen=True)
class Toleration:
    """A toleration of a node taint: ``key`` with ``value`` (operator Equal) or any value
    (operator Exists), for ``effect``."""

    key: str
    effect: str
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Toleration":
        """``KEY[=VALUE]:EFFECT``, e.g. ``nvidia.com/gpu:NoSchedule``."""
        taint, _, effect = text.rpartition(":")
        key, sep, value = taint.partition("=")
        if (
            not QUALIFIED_NAME.fullmatch(key)
            or effect not in TAINT_EFFECTS
            or (sep and not LABEL_VALUE.fullmatch(value))
        ):
            raise ConfigError(
                f"toleration {text!r}: expected KEY[=VALUE]:EFFECT with a "
                f"Kubernetes taint key and EFFECT one of {', '.join(TAINT_EFFECTS)}"
                " (e.g. nvidia.com/gpu:NoSchedule)"
            )
        return cls(key, effect, value if sep else None)

    def as_dict(self) -> dict:
        operator = (
            {"operator": "Equal", "value": self.value}
            if self.value is not None
            else {"operator": "Exists"}
        )
        return {"key": self.key, **operator, "effect": self.effect}


def parse_node_selector(texts: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` node labels (e.g. ``cloud.google.com/gke-accelerator=nvidia-l4``)."""
    pairs = []
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not QUALIFIED_NAME.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
            raise ConfigError(
                f"node selector {text!r}: expected KEY=VALUE with a Kubernetes label key and value"
            )
        pairs.append((key, value))
    return tuple(pairs)


@dataclass(frozen=True)
class Deployment:
    """Where the steps run: one image setting (tags ``-cpu`` and ``-gpu``), the GPUs of each
    training task (0: train on the CPU image), the Secret whose credentials the MLflow steps
    get as environment variables, and the PVC the training tasks keep their cache on (None:
    no Secret, no PVC). With ``workers`` > 1 each training task launches a job (``launcher``:
    a ``TFJob``, or a Trainer v2 ``TrainJob`` of the ClusterTrainingRuntime ``runtime``) of that
    many workers with ``gpus`` GPUs each, which share the PVC with it (so it is required).

    The GPU tasks get ``tolerations`` and ``node_selector``; every task is stopped after
    ``step_timeout`` seconds, training after ``train_timeout`` (0: no limit; a distributed
    job's own deadline is the launcher's); training is retried ``train_retries`` times, and a
    retry resumes from the last checkpoint where the cache PVC keeps it."""

    image: str = field(default_factory=configured_image)
    gpus: int = 1
    accelerator: str = "nvidia.com/gpu"
    credentials_secret: str | None = CREDENTIALS_SECRET
    cache_pvc: str | None = CACHE_PVC
    workers: int = 1
    launcher: str = "tfjob"
    runtime: str = "image-finetune-tensorflow"
    tolerations: tuple[Toleration, ...] = (Toleration.parse(GPU_TOLERATION),)
    node_selector: tuple[tuple[str, str], ...] = ()
    train_timeout: int = 48 * 3600
    step_timeout: int = 6 * 3600
    train_retries: int = 2

    def __post_init__(self):
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, not {self.workers}")
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"launcher {self.launcher!r}: expected one of {', '.join(LAUNCHERS)}")
        for name in ("train_timeout", "step_timeout", "train_retries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, not {getattr(self, name)}")
        if self.distributed and not self.cache_pvc:
            raise ConfigError(
                f"--workers {self.workers} needs the cache PVC: the job's workers read their "
                f"inputs from it and the chief writes the model there; name one with "
                f"--cache-pvc (default {CACHE_PVC}) instead of ''"
            )

    @property
    def distributed(self) -> bool:
        """Whether training runs as a multi-worker job of the training operator."""
        return self.workers > 1

    @property
    def cpu_image(self) -> str:
        return cpu_image(self.image)

    @property
    def training_image(self) -> str:
        """The image training runs in: the GPU variant, or the CPU one without GPUs."""
        return gpu_image(self.image) if self.gpus else self.cpu_image

    @property
    def cache_dir(self) -> str:
        """The default training cache: on the PVC, else a scratch folder per task ("")."""
        return CACHE_MOUNT if self.cache_pvc else ""

    def on_cpu(
        self, task: PipelineTask, cpu: str, memory: str, *, retries: int = 0, cache: bool = True
    ) -> PipelineTask:
        """Place a step on the CPU image with its requests, retries and caching."""
        task.set_container_image(self.cpu_image)
        task.set_cpu_request(cpu).set_memory_request(memory).set_caching_options(cache)
        if retries:
            task.set_retry(retries, backoff_duration="30s", backoff_factor=2.0)
        if self.step_timeout:
            kubernetes.set_timeout(task, self.step_timeout)
        return task

    def for_training(self, task: PipelineTask) -> PipelineTask:
        """Place a training step: the GPU image, accelerator, tolerations and node selector,
        or the CPU image; its timeout and retries (a retry resumes from the checkpoint)."""
        self.on_cpu(task, "4", "16G", retries=self.train_retries)
        kubernetes.set_timeout(task, self.train_timeout)
        if self.gpus:
            task.set_container_image(self.training_image)
            task.set_accelerator_type(self.accelerator).set_accelerator_limit(self.gpus)
            for toleration in self.tolerations:
                kubernetes.add_toleration(
                    task,
                    key=toleration.key,
                    operator=toleration.as_dict()["operator"],
                    value=toleration.value,
                    effect=toleration.effect,
                )
            for key, value in self.node_selector:
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
        if self.cache_pvc:
            kubernetes.mount_pvc(task, pvc_name=self.cache_pvc, mount_path=CACHE_MOUNT)
        return task

    def job_inputs(self) -> dict:
        """What a job launcher needs to know of where its job runs."""
        return {
            "workers": self.workers,
            "gpus": self.gpus,
            "image": self.training_image,
            "cache_pvc": self.cache_pvc,
            "cache_mount": CACHE_MOUNT,
            "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            "launcher": self.launcher,
            "runtime": self.runtime,
            "timeout_seconds": self.train_timeout,
            "tolerations": [t.as_dict() for t in self.tolerations] if self.gpus else [],
            "node_selector": dict(self.node_selector) if self.gpus else {},
        }

    def for_job_launcher(self, task: PipelineTask) -> PipelineTask:
        """Place a job launcher: a small CPU pod that shares the cache PVC with its job; a
        retried launcher follows the job it created (the job's name is the run's)."""
        self.on_cpu(task, "500m", "1G", retries=self.train_retries)
        kubernetes.mount_pvc(task, pvc_name=self.cache_pvc, mount_path=CACHE_MOUNT)
        return task

    def with_credentials(self, task: PipelineTask) -> PipelineTask:
        """Give a step that talks to MLflow (or its S3 store) the Secret's credentials."""
        if self.credentials_secret:
            kubernetes.use_secret_as_env(
                task,
                secret_name=self.credentials_secret,
                secret_key_to_env={name: name for name in CREDENTIAL_VARIABLES},
                optional=True,
            )
        return task
