"""Run the pipeline on this machine with ``kfp.local``'s subprocess runner.

Every task runs the same component code, in the same order, under the same conditions as in
a cluster; what differs is that tasks run one at a time in subprocesses of this virtual
environment (images, resource requests and display names have no effect).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp import local
from kfp.local import io
from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils
from kfp.pipeline_spec import pipeline_spec_pb2

from image_finetune.config import Params
from image_finetune.registry.lineage import git_commit
from pipelines.pipeline import build_pipeline, section_arguments

# Expected under the subprocess runner: the images are not Python images, and resource
# requests and display names only mean something to a cluster.
_LOCAL_NOISE = (r"You may be attemping to run a task that uses custom or non-Python base image",
                r"Task '.*': settings \[.*\] have no effect in the current local runner")


@dataclass(frozen=True)
class LocalRun:
    """How a local run ended, and where its tasks' outputs are."""

    succeeded: bool
    pipeline_root: Path
    seconds: float
    error: str = ""


def _dag_output_artifacts(
    cls: type, dag_outputs_spec: pipeline_spec_pb2.DagOutputsSpec, io_store: io.IOStore
) -> dict[str, Any]:
    """A DAG's output artifacts; for a ``dsl.OneOf``, the one its executed branch produced."""
    outputs = {}
    for name, spec in dag_outputs_spec.artifacts.items():
        produced = []
        for selector in spec.artifact_selectors:
            with contextlib.suppress(ValueError):  # a branch that did not run
                produced.append(io_store.get_task_output(selector.producer_subtask,
                                                         selector.output_artifact_key))
        if len(produced) != 1:
            raise ValueError(f"DAG output {name!r}: {len(produced)} branches produced it, "
                             "expected exactly one")
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
    params: Params, project_root: Path, pipeline_root: Path, cache_dir: Path,
    enable_caching: bool = False,
) -> LocalRun:
    """Compile the pipeline for ``params`` and run it with them as arguments.

    Tasks run in ``project_root``, so the relative paths in params.yaml (data, weights, the
    MLflow store) resolve as they do for ``dvc repro``. ``cache_dir`` keeps the training
    feature cache and finished attempts between runs and, with ``enable_caching``,
    kfp.local's task cache (which tasks with Metrics outputs never hit).
    """
    pipeline = build_pipeline(params, git_commit=git_commit(project_root))
    pipeline_root, cache_dir = pipeline_root.resolve(), cache_dir.resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=True, enable_caching=enable_caching,
               cache_root=str(cache_dir / "kfp-local"))
    arguments = {**section_arguments(params), "cache_dir": str(cache_dir)}
    start = time.perf_counter()
    with warnings.catch_warnings(), contextlib.chdir(project_root), oneof_artifact_outputs():
        for message in _LOCAL_NOISE:
            warnings.filterwarnings("ignore", message=message)
        try:
            pipeline(**arguments)
        except RuntimeError as exc:  # kfp.local's "finished with status FAILURE"
            error = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # kfp.local colours its messages
            return LocalRun(False, pipeline_root, time.perf_counter() - start, error)
    return LocalRun(True, pipeline_root, time.perf_counter() - start)
