"""Where the pipeline's steps run, chosen when it is compiled: the images, the GPUs of the
training tasks and the workers of each (more than one: a distributed ``TFJob`` that the task
launches), the Kubernetes Secret that gives the MLflow steps their credentials and the
PersistentVolumeClaim that keeps the training cache between tasks and runs."""

from dataclasses import dataclass, field

from kfp import dsl, kubernetes
from kfp.dsl.pipeline_task import PipelineTask

from components.runtime import configured_image, cpu_image, gpu_image
from image_finetune.errors import ConfigError

CREDENTIALS_SECRET = "mlflow-client"  # as infra/k8s/serving.yaml: the same server, keys
CACHE_PVC = "image-finetune-cache"  # infra/k8s/pipeline-cache.yaml
CACHE_MOUNT = "/cache"
# The Secret's keys are the variables they become, as in `mlflow-client`, which the serving
# Deployment reads whole. Each is optional: a server wants a token or a user and password,
# and the S3 keys only matter where MLflow's artifacts are on S3.
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                        "MLFLOW_TRACKING_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                        "MLFLOW_S3_ENDPOINT_URL")


@dataclass(frozen=True)
class Deployment:
    """Where the steps run: one image setting (tags ``-cpu`` and ``-gpu``), the GPUs of each
    training task (0: train on the CPU image), the Secret whose credentials the MLflow steps
    get as environment variables, and the PVC the training tasks keep their cache on (None:
    no Secret, no PVC). With ``workers`` > 1 each training task launches a ``TFJob`` of that
    many workers with ``gpus`` GPUs each, which share the PVC with it (so it is required)."""

    image: str = field(default_factory=configured_image)
    gpus: int = 1
    accelerator: str = "nvidia.com/gpu"
    credentials_secret: str | None = CREDENTIALS_SECRET
    cache_pvc: str | None = CACHE_PVC
    workers: int = 1

    def __post_init__(self):
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, not {self.workers}")
        if self.distributed and not self.cache_pvc:
            raise ConfigError(
                f"--workers {self.workers} needs the cache PVC: the job's workers read their "
                f"inputs from it and the chief writes the model there; name one with "
                f"--cache-pvc (default {CACHE_PVC}) instead of ''")

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
        return task

    def for_training(self, task: PipelineTask) -> PipelineTask:
        """Place a training step: the GPU image and accelerator, or the CPU image."""
        self.on_cpu(task, "4", "16G")
        if self.gpus:
            task.set_container_image(self.training_image)
            task.set_accelerator_type(self.accelerator).set_accelerator_limit(self.gpus)
        if self.cache_pvc:
            kubernetes.mount_pvc(task, pvc_name=self.cache_pvc, mount_path=CACHE_MOUNT)
        return task

    def job_inputs(self) -> dict:
        """What a job launcher needs to know of where its job runs."""
        return {"workers": self.workers, "gpus": self.gpus, "image": self.training_image,
                "cache_pvc": self.cache_pvc, "cache_mount": CACHE_MOUNT,
                "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}

    def for_job_launcher(self, task: PipelineTask) -> PipelineTask:
        """Place a job launcher: a small CPU pod that shares the cache PVC with its job."""
        self.on_cpu(task, "500m", "1G")
        kubernetes.mount_pvc(task, pvc_name=self.cache_pvc, mount_path=CACHE_MOUNT)
        return task

    def with_credentials(self, task: PipelineTask) -> PipelineTask:
        """Give a step that talks to MLflow (or its S3 store) the Secret's credentials."""
        if self.credentials_secret:
            kubernetes.use_secret_as_env(
                task, secret_name=self.credentials_secret,
                secret_key_to_env={name: name for name in CREDENTIAL_VARIABLES}, optional=True)
        return task
