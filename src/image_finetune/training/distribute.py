"""Data-parallel training: the devices and workers a rung trains on, and how its batch and
learning rate scale with them (``train.distribution``, ``train.batch_scaling``).

- ``one_device``: the default device, as without this module;
- ``mirrored``: every local device (``tf.distribute.MirroredStrategy`` with TensorFlow,
  ``keras.distribution.DataParallel`` with JAX); on a host without accelerators
  ``train.host_devices`` splits the CPU into that many logical devices, so that tests and
  benchmarks exercise the same code as a multi-GPU node;
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the cluster that
  ``TF_CONFIG`` names (what Kubeflow's training operator sets on each TFJob worker; on a
  Kubeflow Trainer v2 TrainJob's node, made from the worker list the launcher passes and the
  Indexed Job's completion index: :func:`export_jobset_cluster`).
  Worker 0 is the chief: it alone writes checkpoints, logs and outputs.

A strategy is made once per process: TensorFlow fixes its devices and collectives when its
runtime starts, so every rung of a process shares one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import keras

from image_finetune.config import Rung, TrainParams
from image_finetune.errors import ConfigError
from image_finetune.training.runtime import local_devices, split_host

log = logging.getLogger(__name__)

TF_CONFIG_ENV = "TF_CONFIG"
# Set by image_finetune.training.job_spec on a TrainJob's nodes, and by Kubernetes on an
# Indexed Job's.
WORKER_HOSTS_ENV = "IMAGE_FINETUNE_WORKER_HOSTS"
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"


@dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-worker cluster."""

    workers: int
    index: int


def read_cluster(environ: dict[str, str]) -> Cluster | None:
    """The cluster ``TF_CONFIG`` describes (None when unset); a clear error when it is
    malformed, naming what is wrong."""
    raw = environ.get(TF_CONFIG_ENV, "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        workers = [*config["cluster"].get("chief", []), *config["cluster"]["worker"]]
        task = config["task"]
        index = int(task["index"]) + (
            0 if task["type"] == "chief" else len(config["cluster"].get("chief", []))
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"{TF_CONFIG_ENV} is not a valid cluster description ({exc!r}): "
            'expected {"cluster": {"worker": ["host:port", ...]}, '
            '"task": {"type": "worker", "index": N}}'
        ) from exc
    if task["type"] not in ("chief", "worker") or not 0 <= index < len(workers):
        raise ConfigError(
            f"{TF_CONFIG_ENV}: task {task!r} is not one of the cluster's {len(workers)} workers"
        )
    return Cluster(workers=len(workers), index=index)


def jobset_tf_config(environ: dict[str, str]) -> str | None:
    """The ``TF_CONFIG`` of a TrainJob's node: the workers the launcher lists, this one by
    its Indexed Job's completion index (None where either is missing)."""
    hosts = [host for host in environ.get(WORKER_HOSTS_ENV, "").split(",") if host]
    index = environ.get(COMPLETION_INDEX_ENV, "").strip()
    if not hosts or not index:
        return None
    if not index.isdigit() or int(index) >= len(hosts):
        raise ConfigError(
            f"{COMPLETION_INDEX_ENV}={index!r} is not one of the "
            f"{len(hosts)} workers in {WORKER_HOSTS_ENV}"
        )
    return json.dumps(
        {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": int(index)}}
    )


def export_jobset_cluster(environ=os.environ) -> None:
    """Give a TrainJob's node the ``TF_CONFIG`` that TensorFlow's strategy reads, unless one
    is set already (a TFJob's)."""
    if not environ.get(TF_CONFIG_ENV) and (made := jobset_tf_config(dict(environ))):
        environ[TF_CONFIG_ENV] = made


def choose_distribution(setting: str, cluster: Cluster | None, local_devices: int) -> str:
    """The distribution ``train.distribution`` asks for: ``auto`` takes several workers
    when ``TF_CONFIG`` names them, else every local device when there are several."""
    if setting == "multi_worker" and cluster is None:
        raise ConfigError(
            f"train.distribution is multi_worker but {TF_CONFIG_ENV} is not set "
            "(each worker needs it: the training operator sets it on a TFJob)"
        )
    if setting != "auto":
        return setting
    if cluster is not None and cluster.workers > 1:
        return "multi_worker"
    return "mirrored" if local_devices > 1 else "one_device"


def refuse_workers(train: TrainParams, step: str) -> None:
    """Stop a step that runs on one node when several workers are asked for."""
    if choose_distribution(train.distribution, read_cluster(dict(os.environ)), 1) == "multi_worker":
        raise ConfigError(
            f"{step} runs on one node; several workers train one rung at a time "
            f"(image-finetune train-rung: what a TFJob's workers run). Unset "
            f"{TF_CONFIG_ENV} or set train.distribution to one_device or mirrored"
        )


def scaled_rung(rung: Rung, replicas: int, batch_scaling: str) -> Rung:
    """The rung as ``replicas`` replicas run it. ``global``: ``batch_size`` is the global
    batch, split across the replicas, and the learning rate stays (the same optimization as
    on one device). ``per_replica``: ``batch_size`` is each replica's, so the global batch
    and, by the linear scaling rule (Goyal et al., 2017), the learning rate grow with the
    replicas; the rung's warmup eases the larger rate in."""
    if batch_scaling == "global":
        if rung.batch_size < replicas:
            raise ConfigError(
                f"rung {rung.name!r}: batch_size {rung.batch_size} is smaller "
                f"than the {replicas} replicas it is split across"
            )
        return rung
    return rung.model_copy(
        update={
            "batch_size": rung.batch_size * replicas,
            "learning_rate": min(1.0, rung.learning_rate * replicas),
        }
    )


@dataclass(frozen=True)
class Replicas:
    """Where a rung trains: the strategy (TensorFlow), the replica count, this worker."""

    kind: str
    count: int
    workers: int = 1
    worker: int = 0
    strategy: Any = None

    @property
    def is_chief(self) -> bool:
        """Whether this process writes (checkpoints, logs, outputs)."""
        return self.worker == 0

    @property
    def layout(self) -> str:
        """What every worker of the cluster shares, e.g. ``mirrored x2``."""
        return f"{self.kind} x{self.count}"

    def describe(self) -> str:
        """The layout and, with several workers, this one: ``multi_worker x2 (worker 1 of 2)``."""
        where = f" (worker {self.worker} of {self.workers})" if self.workers > 1 else ""
        return f"{self.layout}{where}"

    def scope(self) -> contextlib.AbstractContextManager:
        """Where variables are made and fit runs: the strategy's scope, if any."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def fitting_model(self, model: keras.Model) -> keras.Model:
        """The model ``fit`` runs. Keras 3 cannot reduce a step's scalar logs across workers
        (keras-team/keras#20585), so with several workers the model is wrapped, outside the
        strategy's scope, by one whose steps hand their logs on as one-element vectors; the
        layers (and so the weights) are the model's own."""
        if self.kind != "multi_worker":
            return model
        return WorkerSteps(inputs=model.inputs, outputs=model.outputs, name=model.name)

    def barrier(self) -> None:
        """Wait until every worker is here (the chief prepares the checkpoint the others
        read)."""
        if self.kind == "multi_worker":
            import tensorflow as tf

            one = self.strategy.run(lambda: tf.constant(1.0))
            self.strategy.reduce("SUM", one, axis=None)


ONE_DEVICE = Replicas("one_device", 1)


class WorkerSteps(keras.Model):
    """A functional model whose train and test steps return their logs as vectors (see
    :meth:`Replicas.fitting_model`)."""

    def train_step(self, data):
        return _as_vectors(super().train_step(data))

    def test_step(self, data):
        return _as_vectors(super().test_step(data))


def _as_vectors(logs: dict) -> dict:
    return {name: keras.ops.reshape(value, (1,)) for name, value in logs.items()}


def start_replicas(train: TrainParams) -> Replicas:
    """The replicas ``train.distribution`` asks for, made once per process. Call it before
    anything else runs on the backend: devices are fixed when its runtime starts."""
    export_jobset_cluster()
    cluster = read_cluster(dict(os.environ))
    backend = keras.config.backend()
    if train.host_devices > 1 and train.distribution in ("auto", "mirrored"):
        split_host(backend, train.host_devices)
    kind = choose_distribution(train.distribution, cluster, local_devices(backend))
    if kind != "one_device" and backend not in ("tensorflow", "jax"):
        raise ConfigError(
            f"train.distribution {kind}: the {backend} backend trains on one "
            "device here (use tensorflow or jax)"
        )
    if kind == "multi_worker" and backend != "tensorflow":
        raise ConfigError(
            "train.distribution multi_worker needs the tensorflow backend "
            "(MultiWorkerMirroredStrategy)"
        )
    replicas = _replicas(kind, backend, cluster)
    log.info("training on %s", replicas.describe())
    return replicas


@functools.cache
def _replicas(kind: str, backend: str, cluster: Cluster | None) -> Replicas:
    if kind == "one_device":
        return ONE_DEVICE
    if backend == "jax":
        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return Replicas("mirrored", len(devices))
    import tensorflow as tf

    if kind == "multi_worker":
        if cluster is None:
            raise ConfigError("multi_worker training needs TF_CONFIG to name the cluster")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return Replicas(
            kind, strategy.num_replicas_in_sync, cluster.workers, cluster.index, strategy
        )
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
        d.name for d in tf.config.list_logical_devices("CPU")
    ]
    strategy = tf.distribute.MirroredStrategy(devices)
    return Replicas(kind, strategy.num_replicas_in_sync, strategy=strategy)
