"""The Kubernetes API, for the few calls a training job's launcher makes: create, read and
delete a ``TFJob`` or a Trainer v2 ``TrainJob``, find its chief's pod and read that pod's
log. Errors become
:class:`ClusterError` with the API's status and reason (never its request headers)."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from image_finetune.errors import ServiceError
from image_finetune.training.job_spec import TFJOB, JobKind, JobState, job_state

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
BAD_REQUEST, NOT_FOUND, FORBIDDEN = 400, 404, 403


class ClusterError(ServiceError):
    """The Kubernetes API is out of reach or refused a call; the message says which call."""


class TrainingJobs:
    """Jobs of one kind (``TFJob`` or ``TrainJob``) and their pods in one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str, kind: JobKind = TFJOB):
        self.namespace, self.kind = namespace, kind
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    @classmethod
    def in_cluster(cls, kind: JobKind = TFJOB) -> TrainingJobs:
        """From inside a pod: its service account's token, its own namespace."""
        try:
            config.load_incluster_config()
            namespace = NAMESPACE_FILE.read_text().strip()
        except (config.ConfigException, OSError) as exc:
            raise ClusterError(
                f"not running in a Kubernetes pod with a service account token "
                f"({exc}): a distributed rung launches from a cluster"
            ) from None
        return cls(client.ApiClient(), namespace, kind)

    def create(self, manifest: dict) -> None:
        try:
            self.custom.create_namespaced_custom_object(
                *self._api(), self.namespace, self.kind.plural, manifest
            )
        except ApiException as exc:
            name = manifest["metadata"]["name"]
            raise self._error(f"create {self.kind.kind} {name}", exc) from None

    def exists(self, name: str) -> bool:
        return self._get(name) is not None

    def state(self, name: str) -> JobState:
        """Where the job stands, from its status conditions."""
        job = self._get(name)
        if job is None:
            raise ClusterError(f"{self.kind.kind} {name} is gone: someone deleted it while it ran")
        return job_state(job.get("status"))

    def _get(self, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(
                *self._api(), self.namespace, self.kind.plural, name
            )
        except ApiException as exc:
            if exc.status == NOT_FOUND:
                return None
            raise self._error(f"read {self.kind.kind} {name}", exc) from None

    def delete(self, name: str) -> None:
        """Delete the job and, with it, its pods (gone already is fine)."""
        try:
            self.custom.delete_namespaced_custom_object(
                *self._api(),
                self.namespace,
                self.kind.plural,
                name,
                propagation_policy="Foreground",
            )
        except ApiException as exc:
            if exc.status != NOT_FOUND:
                raise self._error(f"delete {self.kind.kind} {name}", exc) from None

    def chief_pod(self, name: str) -> str | None:
        """The name of the job's worker 0 pod, if it exists yet."""
        try:
            pods = self.core.list_namespaced_pod(
                self.namespace, label_selector=self.kind.chief_selector(name)
            )
        except ApiException as exc:
            raise self._error(f"list the pods of {self.kind.kind} {name}", exc) from None
        return pods.items[0].metadata.name if pods.items else None

    def log(self, pod: str, since_seconds: int | None = None) -> str:
        """The pod's log (of the last ``since_seconds``), each line timestamped; "" while
        its container has not started."""
        try:
            return self.core.read_namespaced_pod_log(
                pod, self.namespace, since_seconds=since_seconds, timestamps=True
            )
        except ApiException as exc:
            if exc.status in (BAD_REQUEST, NOT_FOUND):  # container creating, or the pod just went
                return ""
            raise self._error(f"read the log of pod {pod}", exc) from None

    def _api(self) -> tuple[str, str]:
        return self.kind.group, self.kind.version

    def _error(self, what: str, exc: ApiException) -> ClusterError:
        hint = (
            ": the run's service account needs the Role in infra/k8s/components/pipeline/"
            f"train-job-rbac.yaml in namespace {self.namespace}"
            if exc.status == FORBIDDEN
            else ""
        )
        return ClusterError(f"Kubernetes API: could not {what} ({exc.status} {exc.reason}){hint}")
