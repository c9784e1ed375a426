"""The pipeline compiled with ``--workers N``: each ``train rung k`` task launches a TFJob
(the ``train_rung_job`` component) on the CPU image, shares the cache PVC with its job and
receives what the manifest is built from; with the default (one worker) the training tasks
are the ``train_rung`` component as before, and ``--workers`` without the PVC is refused."""

import pytest
from google.protobuf import json_format

from image_finetune.components import train_rung, train_rung_job
from tests.unit.test_pipeline_spec import (
    IMAGE,
    compile_with,
    constant,
    container_tasks,
    executor,
    invoke_compile,
)


def training_tasks(spec) -> dict:
    return {
        task.task_info.name: task
        for task in container_tasks(spec, spec.root.dag)
        if task.task_info.name.startswith("train rung")
    }


def component_source(spec, task) -> str:
    return " ".join(executor(spec, task)["command"])


@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    return compile_with(tmp_path_factory.mktemp("workers"), "--workers", "2", "--gpus", "1")


def test_with_workers_each_training_task_launches_a_tfjob(distributed):
    spec, platform = distributed
    tasks = training_tasks(spec)
    assert set(tasks) == {"train rung 0 (frozen-head)", "train rung 1 (top-blocks)"}
    for name, task in tasks.items():
        assert "def train_rung_job(" in component_source(spec, task), name
        container = executor(spec, task)
        # The launcher is a small CPU pod; the GPUs are the job's.
        assert container["image"] == f"{IMAGE}-cpu"
        assert "accelerator" not in container["resources"]
        inputs = task.inputs.parameters
        assert {
            key: json_format.MessageToDict(inputs[key].runtime_value.constant)
            for key in ("workers", "gpus", "image", "cache_pvc", "cache_mount")
        } == {
            "workers": 2,
            "gpus": 1,
            "image": f"{IMAGE}-gpu",
            "cache_pvc": "image-finetune-cache",
            "cache_mount": "/cache",
        }
        assert constant(inputs["run_id"]) == "{{$.pipeline_job_uuid}}"
        assert set(task.inputs.artifacts) >= {"dataset"}
        [mount] = platform[spec.components[task.component_ref.name].executor_label].pvc_mount
        assert (mount.mount_path, constant(mount.pvc_name_parameter)) == (
            "/cache",
            "image-finetune-cache",
        )
    assert "warm_start" in tasks["train rung 1 (top-blocks)"].inputs.artifacts


def test_the_launcher_hands_on_what_the_training_task_did(distributed):
    """Evaluation and the gates read the launcher's outputs as they read train_rung's."""
    launcher = train_rung_job.component_spec
    trained = train_rung.component_spec
    assert launcher.outputs.keys() == trained.outputs.keys() == {"classifier", "metrics"}
    for name in trained.outputs:
        assert launcher.outputs[name].type == trained.outputs[name].type
    assert set(trained.inputs) <= set(launcher.inputs)


def test_by_default_training_runs_in_the_tasks_own_pod_as_before(tmp_path):
    spec, platform = compile_with(tmp_path)
    own = train_rung.pipeline_spec
    [own_executor] = json_format.MessageToDict(own.deployment_spec)["executors"].values()
    for name, task in training_tasks(spec).items():
        assert executor(spec, task)["command"] == own_executor["container"]["command"], name
        assert executor(spec, task)["image"] == f"{IMAGE}-gpu"
        assert not {"workers", "run_id"} & set(task.inputs.parameters), name
    assert all(
        "def train_rung_job(" not in component_source(spec, task)
        for task in container_tasks(spec, spec.root.dag)
    )


def test_workers_without_the_cache_volume_are_refused(tmp_path):
    result = invoke_compile(tmp_path / "p.yaml", "--workers", "2", "--cache-pvc", "")
    assert result.exit_code == 2
    assert "--workers 2 needs the cache PVC" in result.output
    assert "Traceback" not in result.output
