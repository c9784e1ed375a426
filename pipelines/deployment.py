"""Where the pipeline's steps run, chosen when it is compiled: the images, the GPUs of the
training tasks, the Kubernetes Secret that gives the MLflow steps their credentials and the
PersistentVolumeClaim that keeps the training cache between tasks and runs."""

from dataclasses import dataclass, field

from kfp import kubernetes
from kfp.dsl.pipeline_task import PipelineTask

from components.runtime import configured_image, cpu_image, gpu_image

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
    no Secret, no PVC)."""

    image: str = field(default_factory=configured_image)
    gpus: int = 1
    accelerator: str = "nvidia.com/gpu"
    credentials_secret: str | None = CREDENTIALS_SECRET
    cache_pvc: str | None = CACHE_PVC

    @property
    def cpu_image(self) -> str:
        return cpu_image(self.image)

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
            task.set_container_image(gpu_image(self.image))
            task.set_accelerator_type(self.accelerator).set_accelerator_limit(self.gpus)
        if self.cache_pvc:
            kubernetes.mount_pvc(task, pvc_name=self.cache_pvc, mount_path=CACHE_MOUNT)
        return task

    def with_credentials(self, task: PipelineTask) -> PipelineTask:
        """Give a step that talks to MLflow (or its S3 store) the Secret's credentials."""
        if self.credentials_secret:
            kubernetes.use_secret_as_env(
                task, secret_name=self.credentials_secret,
                secret_key_to_env={name: name for name in CREDENTIAL_VARIABLES}, optional=True)
        return task
