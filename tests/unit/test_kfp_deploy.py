"""Where the pipeline's tasks run on a cluster (the compiled spec: GPU tolerations and node
selectors, task timeouts, training retries, from ``compile``'s flags) and ``upload``: the real
``kfp.Client`` against the KFP API stand-in (tests/kfp_api.py), a pipeline and then its
versions."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from image_finetune.errors import ConfigError
from image_finetune.pipelines import cli
from image_finetune.pipelines.deployment import Toleration, parse_node_selector
from tests.kfp_api import fake_kfp
from tests.unit.test_pipeline_spec import container_tasks, kubernetes_settings
from tests.unit.test_train_job_spec import compile_with, training_tasks

ROOT = Path(__file__).resolve().parents[2]
PARAMS = str(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def placed(tmp_path_factory):
    return compile_with(
        tmp_path_factory.mktemp("placed"),
        "--toleration",
        "nvidia.com/gpu:NoSchedule",
        "--toleration",
        "dedicated=ml:NoExecute",
        "--node-selector",
        "cloud.google.com/gke-accelerator=nvidia-l4",
        "--train-timeout",
        "7200",
        "--step-timeout",
        "600",
        "--train-retries",
        "3",
    )


def test_gpu_training_tolerates_the_taints_and_selects_the_nodes_named(placed):
    spec, platform = placed
    settings = kubernetes_settings(spec, platform)
    training = set(training_tasks(spec))
    for name, config in settings.items():
        tolerations = {(t.key, t.operator, t.value, t.effect) for t in config.tolerations}
        selector = dict(config.node_selector.labels)
        if name in training:
            assert tolerations == {
                ("nvidia.com/gpu", "Exists", "", "NoSchedule"),
                ("dedicated", "Equal", "ml", "NoExecute"),
            }, name
            assert selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}, name
        else:  # CPU steps stay off the GPU nodes
            assert not tolerations and not selector, name


def test_every_task_has_a_timeout_and_training_retries_from_its_checkpoint(placed):
    spec, platform = placed
    settings = kubernetes_settings(spec, platform)
    training = training_tasks(spec)
    tasks = {task.task_info.name: task for task in container_tasks(spec, spec.root.dag)}
    assert set(settings) == set(tasks)  # each has its timeout at least
    for name in tasks:
        deadline = settings[name].active_deadline_seconds
        assert deadline == (7200 if name in training else 600), name
    for name, task in training.items():
        assert task.retry_policy.max_retry_count == 3, name
        # The retry resumes: the cache volume keeps the checkpoint between tries.
        assert settings[name].pvc_mount[0].mount_path == "/cache"


def test_by_default_gpu_training_tolerates_the_nvidia_taint(tmp_path):
    spec, platform = compile_with(tmp_path)
    for name, config in kubernetes_settings(spec, platform).items():
        keys = [t.key for t in config.tolerations]
        assert keys == (["nvidia.com/gpu"] if name in training_tasks(spec) else []), name


@pytest.mark.parametrize(
    "text", ["nvidia.com/gpu", "gpu:Sometimes", "bad key!:NoSchedule", "k=v v:NoSchedule"]
)
def test_a_malformed_toleration_is_refused(text):
    with pytest.raises(ConfigError, match="KEY\\[=VALUE\\]:EFFECT"):
        Toleration.parse(text)


@pytest.mark.parametrize("text", ["gpu", "=l4", "pool=a b"])
def test_a_malformed_node_selector_is_refused(text):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_node_selector([text])


def test_compile_refuses_a_bad_flag_with_a_message_not_a_traceback(tmp_path):
    result = CliRunner().invoke(
        cli.app,
        [
            "compile",
            "--params",
            PARAMS,
            "--out",
            str(tmp_path / "p.yaml"),
            "--node-selector",
            "gpu",
        ],
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "node selector 'gpu'" in result.output
    result = CliRunner().invoke(
        cli.app,
        ["compile", "--params", PARAMS, "--out", str(tmp_path / "p.yaml"), "--launcher", "mpijob"],
    )
    assert result.exit_code != 0 and "'mpijob'" in result.output


def upload(url: str, *options: str):
    return CliRunner().invoke(
        cli.app,
        ["upload", "--host", url, "--params", PARAMS, *options],
        env={"KFP_TOKEN": "upload-token"},
    )


def test_upload_makes_the_pipeline_then_a_new_version_each_time():
    with fake_kfp() as (url, state):
        first = upload(
            url,
            "--name",
            "cifar",
            "--version",
            "v1",
            "--description",
            "first",
            "--workers",
            "2",
            "--launcher",
            "trainjob",
        )
        assert first.exit_code == 0, first.output
        assert "new pipeline 'cifar' (pipeline-1), version 'v1'" in first.output
        second = upload(url, "--name", "cifar", "--version", "v2")
        assert second.exit_code == 0, second.output
        assert "new version of pipeline 'cifar' (pipeline-1), version 'v2'" in second.output
    assert list(state.pipelines) == ["cifar"]
    assert state.pipelines["cifar"]["description"] == "first"
    named = [(v["pipeline_id"], v["display_name"]) for v in state.versions]
    # The server's first version (named after the pipeline), then ours.
    assert named == [("pipeline-1", "cifar"), ("pipeline-1", "v1"), ("pipeline-1", "v2")]
    assert "pipelineInfo" in state.versions[1]["spec"]  # the compiled YAML travelled
    assert "train_rung_job" in state.versions[1]["spec"]  # with the options compiled in
    assert "train_rung_job" not in state.versions[2]["spec"]
    uploads = [r for r in state.requests if r.method == "POST"]
    assert all(r.headers["authorization"] == "Bearer upload-token" for r in uploads)


def test_upload_of_a_compiled_package_names_its_version_after_the_commit(tmp_path):
    package = tmp_path / "pipeline.yaml"
    compiled = CliRunner().invoke(cli.app, ["compile", "--params", PARAMS, "--out", str(package)])
    assert compiled.exit_code == 0, compiled.output
    with fake_kfp() as (url, state):
        result = upload(url, "--package", str(package))
        assert result.exit_code == 0, result.output
    [_, ours] = state.versions
    assert ours["display_name"].count("-") >= 2 and ours["spec"].count("pipelineInfo") == 1


def test_an_unreachable_kfp_is_a_clear_error():
    with fake_kfp() as (url, _):
        pass  # closed: nothing listens there any more
    result = upload(url, "--name", "cifar", "--version", "v1")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "unreachable" in result.output and "upload-token" not in result.output
