"""The monitoring pipeline, compiled and parsed into KFP's PipelineSpec: the images (and the
exported feedback) imported afresh each run, the monitor never cached and given the registry's
credentials, the retrain under ``dsl.If`` on the monitor's verdict and nothing else, the
retrain being the whole fine-tuning pipeline (same gates, same McNemar) with promotion off;
and ``schedule``'s recurring run as the real ``kfp.Client`` sends it to a stand-in KFP API."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from typer.testing import CliRunner

from image_finetune.config import Params, load_params
from image_finetune.pipelines import cli
from image_finetune.pipelines.deployment import Deployment
from image_finetune.pipelines.monitoring import compile_monitoring_pipeline, default_source
from image_finetune.pipelines.pipeline import compile_pipeline, pipeline_arguments
from tests.kfp_api import fake_kfp

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.com/ml/image-finetune:1.2.3"
SOURCE = "s3://ml/windows/latest.npz"
LABELS = "s3://ml/feedback/"
PipelineSpec = pipeline_spec_pb2.PipelineSpec
MONITOR_PARAMETERS = {
    "source_uri",
    "labels_uri",
    "alias",
    "version",
    "alpha",
    "permutations",
    "min_labels",
}


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(ROOT / "params.yaml", use_env=False)


def compiled(folder: Path, params: Params, **uris) -> tuple[PipelineSpec, dict]:
    path = folder / "monitoring.yaml"
    compile_monitoring_pipeline(params, str(path), Deployment(image=IMAGE), "abc123", **uris)
    spec, platform = yaml.safe_load_all(path.read_text())
    return json_format.ParseDict(spec, PipelineSpec()), platform


@pytest.fixture(scope="module")
def monitoring(params, tmp_path_factory) -> tuple[PipelineSpec, dict]:
    return compiled(
        tmp_path_factory.mktemp("monitoring"), params, source_uri=SOURCE, labels_uri=LABELS
    )


@pytest.fixture(scope="module")
def spec(monitoring) -> PipelineSpec:
    return monitoring[0]


def by_name(dag) -> dict:
    return {task.task_info.name: task for task in dag.tasks.values()}


def dag_of(spec: PipelineSpec, task):
    return spec.components[task.component_ref.name].dag


def task_names(spec: PipelineSpec, dag) -> set[str]:
    """Every task's display name in a DAG and the DAGs nested in it."""
    names = set()
    for task in dag.tasks.values():
        names.add(task.task_info.name)
        if spec.components[task.component_ref.name].WhichOneof("implementation") == "dag":
            names |= task_names(spec, dag_of(spec, task))
    return names


def test_monitor_then_retrain_only_on_the_monitors_verdict(spec):
    tasks = by_name(spec.root.dag)
    assert set(tasks) == {
        "import the images",
        "import the exported feedback",
        "monitor",
        "drift-or-new-labels",
    }
    monitor = tasks["monitor"]
    assert set(monitor.dependent_tasks) == {
        tasks["import the images"].component_ref.name.removeprefix("comp-"),
        tasks["import the exported feedback"].component_ref.name.removeprefix("comp-"),
    }
    condition = tasks["drift-or-new-labels"]
    assert condition.trigger_policy.condition == (
        "inputs.parameter_values['pipelinechannel--monitor-drift-retrain'] == true"
    )
    [retrain] = by_name(dag_of(spec, condition)).values()
    assert retrain.task_info.name == "retrain: the fine-tuning pipeline"


def test_the_retrain_is_the_whole_fine_tuning_pipeline(spec, params, tmp_path):
    compile_pipeline(params, str(tmp_path / "training.yaml"), Deployment(image=IMAGE), "abc123")
    training = json_format.ParseDict(
        next(yaml.safe_load_all((tmp_path / "training.yaml").read_text())), PipelineSpec()
    )
    condition = by_name(spec.root.dag)["drift-or-new-labels"]
    [retrain] = dag_of(spec, condition).tasks.values()
    nested = task_names(spec, dag_of(spec, retrain))
    assert nested == task_names(training, training.root.dag)
    assert {"final gate on test", "register and promote", "gate rung 0"} <= nested
    # Every parameter of the fine-tuning pipeline is handed on from the monitoring one's.
    handed = retrain.inputs.parameters
    assert set(handed) == set(training.root.input_definitions.parameters)
    for name, given in handed.items():
        assert given.component_input_parameter == f"pipelinechannel--{name}"


def test_a_retrained_model_becomes_the_challenger_only(spec, params):
    inputs = spec.root.input_definitions.parameters
    registry = json_format.MessageToDict(inputs["registry"].default_value.struct_value)
    assert registry["promote"] is False and params.registry.promote is True
    assert registry["model_name"] == params.registry.model_name
    # Everything else has params.yaml's values.
    expected = pipeline_arguments(params)
    for name in ("min_accuracy", "rung0_epochs", "data_path", "backbone"):
        default = json_format.MessageToDict(inputs[name].default_value)
        assert default == expected[name], name


def test_the_monitors_parameters_and_their_defaults(spec):
    inputs = spec.root.input_definitions.parameters
    assert set(inputs) >= MONITOR_PARAMETERS
    assert inputs["source_uri"].default_value.string_value == SOURCE
    assert inputs["labels_uri"].default_value.string_value == LABELS
    assert inputs["alias"].default_value.string_value == "champion"
    assert inputs["min_labels"].default_value.number_value == 200


def test_the_monitor_is_never_cached_retries_and_reads_the_registry(monitoring):
    spec, platform = monitoring
    monitor = by_name(spec.root.dag)["monitor"]
    assert monitor.caching_options.enable_cache is False
    assert monitor.retry_policy.max_retry_count == 2
    label = spec.components[monitor.component_ref.name].executor_label
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    [secret] = executors[label]["secretAsEnv"]
    assert secret["secretNameParameter"]["runtimeValue"]["constant"] == "mlflow-client"
    importers = [
        task for task in spec.root.dag.tasks.values() if task.task_info.name.startswith("import")
    ]
    for task in importers:
        importer = spec.deployment_spec["executors"][
            spec.components[task.component_ref.name].executor_label
        ]["importer"]
        assert importer["reimport"] is True  # a new run reads the new images


def test_without_a_labels_uri_there_is_no_labels_input(params, tmp_path):
    spec, _ = compiled(tmp_path, params, source_uri=SOURCE)
    assert "labels_uri" not in spec.root.input_definitions.parameters
    assert "feedback_uri" not in spec.root.input_definitions.parameters
    assert "import the exported feedback" not in by_name(spec.root.dag)
    assert default_source(str(tmp_path / "monitoring.yaml")) == SOURCE
    # Nor extra data for the retrain: its ingest leaves the optional input out.
    condition = dag_of(spec, by_name(spec.root.dag)["drift-or-new-labels"])
    [retrain] = condition.tasks.values()
    assert "extra_data" not in retrain.inputs.artifacts
    ingest, _ = nested_ingest(spec, dag_of(spec, retrain))
    assert "extra" not in ingest.inputs.artifacts
    assert spec.components["comp-ingest-data"].input_definitions.artifacts["extra"].is_optional


def test_schedule_creates_one_at_a_time_recurring_run_without_catch_up(monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "kfp-token")
    with fake_kfp() as (url, state):
        result = CliRunner().invoke(
            cli.app,
            [
                "schedule",
                "--host",
                url,
                "--namespace",
                "team-ml",
                "--cron",
                "0 0 3 * * *",
                "--source-uri",
                SOURCE,
                "--labels-uri",
                LABELS,
                "--min-labels",
                "50",
                "--params",
                str(ROOT / "params.yaml"),
                "--image",
                IMAGE,
                "--service-account",
                "pipeline-runner",
            ],
        )
        assert result.exit_code == 0, result.output
        [created] = state.posted("recurringruns")
    body = created.body
    assert created.headers["authorization"] == "Bearer kfp-token"
    assert (body["trigger"], body["max_concurrency"], body["no_catchup"], body["mode"]) == (
        {"cron_schedule": {"cron": "0 0 3 * * *"}},
        1,
        True,
        "ENABLE",
    )
    assert body["experiment_id"] == state.experiments["image-finetune-monitoring"]["experiment_id"]
    assert body["service_account"] == "pipeline-runner"
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == (
        "image-finetune-monitoring"
    )
    arguments = body["runtime_config"]["parameters"]
    assert (arguments["source_uri"], arguments["labels_uri"], arguments["min_labels"]) == (
        SOURCE,
        LABELS,
        50,
    )
    assert arguments["registry"]["promote"] is False
    assert "recurring run recurring-1" in result.output


def test_schedule_every_n_seconds(monkeypatch):
    with fake_kfp() as (url, state):
        result = CliRunner().invoke(
            cli.app,
            [
                "schedule",
                "--host",
                url,
                "--every",
                "21600",
                "--source-uri",
                SOURCE,
                "--params",
                str(ROOT / "params.yaml"),
            ],
        )
        assert result.exit_code == 0, result.output
        [created] = state.posted("recurringruns")
    assert created.body["trigger"] == {"periodic_schedule": {"interval_second": 21600}}
    assert "labels_uri" not in created.body["runtime_config"]["parameters"]


@pytest.mark.parametrize(
    "options,message",
    [
        (["--cron", "0 3 * * *"], "six fields"),
        (["--cron", "0 0 3 * * *", "--every", "3600"], "exactly one"),
        ([], "exactly one"),
        (["--every", "10"], "at least 300"),
        (["--every", "3600", "--source-uri", " "], "--source-uri"),
    ],
)
def test_schedule_refuses_a_bad_schedule_before_calling_kfp(options, message):
    with fake_kfp() as (url, state):
        result = CliRunner().invoke(
            cli.app,
            [
                "schedule",
                "--host",
                url,
                "--source-uri",
                SOURCE,
                *options,
                "--params",
                str(ROOT / "params.yaml"),
            ],
        )
        assert state.requests == []
    assert result.exit_code == 2 and message in result.output, result.output


def test_schedule_reports_a_refusal_by_kfp(monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "kfp-token")
    with fake_kfp() as (url, _):
        pass  # stopped: nothing listens there any more
    result = CliRunner().invoke(
        cli.app,
        [
            "schedule",
            "--host",
            url,
            "--every",
            "3600",
            "--source-uri",
            SOURCE,
            "--params",
            str(ROOT / "params.yaml"),
        ],
    )
    assert result.exit_code == 7 and "unreachable" in result.output
    assert "kfp-token" not in result.output


# -- labelled feedback: exported from the server's store, trained on by the retrain ----------

FEEDBACK_PVC = "image-finetune-feedback"


@pytest.fixture(scope="module")
def from_store(params, tmp_path_factory) -> tuple[PipelineSpec, dict]:
    return compiled(
        tmp_path_factory.mktemp("from-store"), params, source_uri=SOURCE, feedback_pvc=FEEDBACK_PVC
    )


def pvc_mounts(platform: dict, spec: PipelineSpec, task) -> list[tuple[str, str]]:
    label = spec.components[task.component_ref.name].executor_label
    executor = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][label]
    return [(m["constant"], m["mountPath"]) for m in executor.get("pvcMount", [])]


def nested_ingest(spec: PipelineSpec, dag):
    """The ingest task of the fine-tuning pipeline nested somewhere under ``dag``, and the
    DAG component holding it."""
    for task in dag.tasks.values():
        component = spec.components[task.component_ref.name]
        if task.task_info.name == "ingest":
            return task, dag
        if component.WhichOneof("implementation") == "dag":
            found = nested_ingest(spec, component.dag)
            if found:
                return found
    return None


def test_the_store_is_exported_counted_and_handed_to_the_retrains_ingest(from_store):
    spec, platform = from_store
    tasks = by_name(spec.root.dag)
    assert set(tasks) == {
        "import the images",
        "export the labelled feedback",
        "monitor",
        "drift-or-new-labels",
    }
    exported = tasks["export the labelled feedback"]
    assert exported.caching_options.enable_cache is False  # new labels every run
    assert pvc_mounts(platform, spec, exported) == [(FEEDBACK_PVC, "/var/lib/image-finetune")]
    assert exported.inputs.parameters["feedback_uri"].component_input_parameter == ("feedback_uri")
    inputs = spec.root.input_definitions.parameters
    assert inputs["feedback_uri"].default_value.string_value == (
        "sqlite:////var/lib/image-finetune/feedback.db"
    )  # as components/shadow mounts it
    assert "labels_uri" not in inputs
    # The monitor counts the export; the retrain is given the same export as extra data.
    labels = tasks["monitor"].inputs.artifacts["labels"].task_output_artifact
    assert (labels.producer_task, labels.output_artifact_key) == (
        "export-labelled-feedback",
        "labels",
    )
    condition = dag_of(spec, tasks["drift-or-new-labels"])
    inner = by_name(condition)
    retrain = inner["retrain: the fine-tuning pipeline"]
    assert retrain.inputs.artifacts["extra_data"].component_input_artifact == (
        "pipelinechannel--export-labelled-feedback-labels"
    )
    ingest, _ = nested_ingest(spec, dag_of(spec, retrain))
    assert ingest.inputs.artifacts["extra"].component_input_artifact.endswith("extra_data")
    # Only after the retrain ran to its end does the store's watermark move.
    marked = inner["mark the feedback used"]
    assert list(marked.dependent_tasks) == ["image-finetune"]  # the nested retrain
    assert marked.inputs.artifacts["labels"].component_input_artifact == (
        "pipelinechannel--export-labelled-feedback-labels"
    )
    assert pvc_mounts(platform, spec, marked) == [(FEEDBACK_PVC, "/var/lib/image-finetune")]
    assert marked.caching_options.enable_cache is False


def test_imported_labels_are_handed_to_the_retrain_too(spec):
    condition = dag_of(spec, by_name(spec.root.dag)["drift-or-new-labels"])
    inner = by_name(condition)
    assert set(inner) == {"retrain: the fine-tuning pipeline"}  # no store: no watermark
    handed = inner["retrain: the fine-tuning pipeline"].inputs.artifacts["extra_data"]
    assert handed.component_input_artifact == "pipelinechannel--importer-artifact"


def test_labels_come_from_one_place_only(params, tmp_path):
    from image_finetune.errors import ConfigError

    with pytest.raises(ConfigError, match="not both"):
        compiled(tmp_path, params, source_uri=SOURCE, labels_uri=LABELS, feedback_pvc=FEEDBACK_PVC)
