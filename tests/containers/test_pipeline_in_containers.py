"""The Kubeflow pipeline under kfp.local's DockerRunner: every task in the project's CPU
image, as a non-root user, with the data and weights mounted read-only; a task that fails
inside its container fails the run."""

import os

import pytest
from mlflow import MlflowClient

from image_finetune.errors import ConfigError
from image_finetune.pipelines.local import run_local
from tests.kfp_outputs import produced
from tests.support import PASSABLE_GATE, ROOT, container_params

IMAGE_USER = "1000:0"  # infra/docker/Dockerfile.cpu: USER 1000, group 0


def test_the_loop_runs_in_containers_and_registers_the_winner(container_run):
    run, registry = container_run.local, container_run.params.registry
    assert run.succeeded, run.error
    validation = sorted(
        (d["rung"], d["passed"]) for d in produced(run, "decision") if d["split"] == "validation"
    )
    assert validation == [(0, False), (1, True)]
    [registration] = produced(run, "registration")
    assert registration["registered"] is True and registration["promoted"] is True
    champion = MlflowClient(registry.tracking_uri).get_model_version_by_alias(
        registry.model_name, "champion"
    )
    assert int(champion.version) == int(registration["version"])


def test_every_task_ran_in_its_own_container_as_the_images_user(container_run):
    run = container_run.local
    outputs = list(run.pipeline_root.rglob("executor_output.json"))
    assert len(run.containers) == len(outputs) >= 10
    assert {(c.user, c.exit_code) for c in run.containers} == {(IMAGE_USER, 0)}
    # Written from inside the containers, by the image's user: not root.
    assert {path.stat().st_uid for path in outputs} == {1000}
    # The MLflow store and the training cache were written through their mounts.
    assert any(
        path.stat().st_uid == 1000 for path in (container_run.workspace / "tracking").rglob("*")
    )
    assert any(
        path.stat().st_uid == 1000 for path in (container_run.workspace / "cache").rglob("*")
    )


def test_a_task_failing_in_its_container_fails_the_run(container_run, no_top_weights):
    # Validation (no retries) finds too few images per class and exits non-zero.
    workspace = container_run.workspace
    params = container_params(
        workspace / "strict", workspace / "data", no_top_weights, PASSABLE_GATE
    )
    params = params.model_copy(
        update={"validate_": params.validate_.model_copy(update={"min_images_per_class": 1000})}
    )
    run = run_local(params, ROOT, workspace / "strict-run", workspace / "cache", runner="docker")
    assert not run.succeeded
    # The failing task's own exit code was read; the exit handler still ran and recorded it.
    assert [(c.task, c.exit_code != 0) for c in run.containers] == [
        ("set-rung", False),
        ("set-rung-2", False),
        ("check-params", False),
        ("ingest-data", False),
        ("validate-data", True),
        ("record-status", False),
    ]
    [status] = produced(run, "run_status")
    assert status["state"] == "FAILED"
    assert (
        not (workspace / "strict" / "tracking" / "mlflow.db").exists()
        or MlflowClient(params.registry.tracking_uri).search_registered_models() == []
    )


@pytest.mark.skipif(os.getuid() != 0, reason="tasks run as the caller's own user unless root")
def test_paths_the_tasks_cannot_reach_are_refused_before_any_container_starts(
    cpu_image, tmp_path, small_folder, no_top_weights
):
    # pytest's tmp_path sits under a root-only folder.
    params = container_params(tmp_path, small_folder, no_top_weights, PASSABLE_GATE)
    with pytest.raises(ConfigError, match=r"cannot enter .*chmod o\+x"):
        run_local(params, ROOT, tmp_path / "run", tmp_path / "cache", runner="docker")
