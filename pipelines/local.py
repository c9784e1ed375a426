"""Run the pipeline on this machine with ``kfp.local``: each task in a subprocess of this
virtual environment, or in a container of the project's CPU image (pipelines/containers.py).

Every task runs the same component code, in the same order, under the same conditions as in
a cluster; what differs is that tasks run one at a time (resource requests and display names
have no effect, and under the subprocess runner neither do images).

kfp.local 2.17 runs ``dsl.If``/``dsl.Else``, sub-pipelines, ``dsl.ExitHandler`` and
``dsl.OneOf`` over parameters, but not ``dsl.OneOf`` over artifacts: its DAG-output resolver
insists on exactly one artifact selector ("Expected 1 artifact in ArtifactSelectorSpec").
:func:`oneof_artifact_outputs` adds that case with the rule kfp.local already applies to
parameters: the output of the one branch that ran.
"""

import contextlib
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp import local
from kfp.local import io
from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils
from kfp.pipeline_spec import pipeline_spec_pb2

from image_finetune.components.runtime import configured_image
from image_finetune.config import Params
from image_finetune.pipelines.containers import (
    ContainerRecord,
    Mount,
    absolute_paths,
    container_user,
    containers_that_report,
    image_user,
    mounts_for,
    prepare_mounts,
    runner_arguments,
    tracking_folder,
)
from image_finetune.pipelines.deployment import Deployment
from image_finetune.pipelines.pipeline import build_pipeline, pipeline_arguments
from image_finetune.registry.lineage import git_commit

RUNNERS = ("subprocess", "docker")

# Expected under the subprocess runner: the images are not Python images, and resource
# requests and display names only mean something to a cluster.
_LOCAL_NOISE = (
    r"You may be attemping to run a task that uses custom or non-Python base image",
    r"Task '.*': settings \[.*\] have no effect in the current local runner",
)


@dataclass(frozen=True)
class LocalRun:
    """How a local run ended, and where its tasks' outputs are."""

    succeeded: bool
    pipeline_root: Path
    seconds: float
    error: str = ""
    containers: tuple[ContainerRecord, ...] = field(default=())


def _dag_output_artifacts(
    cls: type, dag_outputs_spec: pipeline_spec_pb2.DagOutputsSpec, io_store: io.IOStore
) -> dict[str, Any]:
    """A DAG's output artifacts; for a ``dsl.OneOf``, the one its executed branch produced."""
    outputs = {}
    for name, spec in dag_outputs_spec.artifacts.items():
        produced = []
        for selector in spec.artifact_selectors:
            with contextlib.suppress(ValueError):  # a branch that did not run
                produced.append(
                    io_store.get_task_output(
                        selector.producer_subtask, selector.output_artifact_key
                    )
                )
        if len(produced) != 1:
            raise ValueError(
                f"DAG output {name!r}: {len(produced)} branches produced it, expected exactly one"
            )
        outputs[name] = produced[0]
    return outputs


@contextlib.contextmanager
def oneof_artifact_outputs() -> Iterator[None]:
    """Let kfp.local resolve ``dsl.OneOf`` over artifacts while the context is open."""
    original = OrchestratorUtils.__dict__["get_dag_output_artifacts"]
    OrchestratorUtils.get_dag_output_artifacts = classmethod(_dag_output_artifacts)
    try:
        yield
    finally:
        OrchestratorUtils.get_dag_output_artifacts = original


def run_local(
    params: Params,
    project_root: Path,
    pipeline_root: Path,
    cache_dir: Path,
    enable_caching: bool = False,
    runner: str = "subprocess",
    image: str | None = None,
) -> LocalRun:
    """Compile the pipeline for ``params`` and run it with them as arguments.

    Tasks run in ``project_root``, so the relative paths in params.yaml (data, weights, the
    MLflow store) resolve as they do for ``dvc repro``; in containers they are made absolute
    and mounted. ``cache_dir`` keeps the training feature cache and finished attempts between
    runs and, with ``enable_caching``, kfp.local's task cache (which tasks with Metrics
    outputs never hit). ``image``: the image setting (tasks run on its ``-cpu`` tag).
    """
    pipeline_root, cache_dir = pipeline_root.resolve(), cache_dir.resolve()
    # No cluster here: no GPUs, no Secret, no volume claim.
    deployment = Deployment(
        image=image or configured_image(), gpus=0, credentials_secret=None, cache_pvc=None
    )
    records: list[ContainerRecord] = []
    tasks_run_by: contextlib.AbstractContextManager[None]
    if runner == "docker":
        params = absolute_paths(params, project_root)
        task_runner = docker_runner(params, deployment, pipeline_root, cache_dir)
        tasks_run_by = containers_that_report(records)
    else:
        task_runner, tasks_run_by = local.SubprocessRunner(use_venv=False), contextlib.nullcontext()
    pipeline = build_pipeline(params, deployment, git_commit=git_commit(project_root))
    local.init(
        runner=task_runner,
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
        enable_caching=enable_caching,
        cache_root=str(cache_dir / "kfp-local"),
    )
    arguments = {**pipeline_arguments(params), "cache_dir": str(cache_dir)}
    start = time.perf_counter()
    with (
        warnings.catch_warnings(),
        contextlib.chdir(project_root),
        oneof_artifact_outputs(),
        tasks_run_by,
    ):
        for message in _LOCAL_NOISE:
            warnings.filterwarnings("ignore", message=message)
        try:
            pipeline(**arguments)
        except RuntimeError as exc:  # kfp.local's "finished with status FAILURE"
            error = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # kfp.local colours its messages
            return LocalRun(
                False, pipeline_root, time.perf_counter() - start, error, tuple(records)
            )
    return LocalRun(True, pipeline_root, time.perf_counter() - start, containers=tuple(records))


def docker_runner(
    params: Params, deployment: Deployment, pipeline_root: Path, cache_dir: Path
) -> local.DockerRunner:
    """kfp.local's DockerRunner on the CPU image, with what the tasks read and write mounted
    and a non-root user; clear errors for a missing image or an unreachable path."""
    image = deployment.cpu_image
    user = container_user(image_user(image))
    mounts = mounts_for(params, cache_dir)
    prepare_mounts([*mounts, Mount(pipeline_root, writable=True)], user)
    working_dir = tracking_folder(params.registry.tracking_uri) or pipeline_root
    return local.DockerRunner(**runner_arguments(mounts, user, working_dir))
