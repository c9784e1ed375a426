"""The compiled Kubeflow pipeline, parsed into KFP's PipelineSpec protobuf: its steps and
their order, the nested conditions of the retrain loop, the OneOf that hands the winner on,
the exit handler, resources, retries, caching, images and parameter defaults; and what
``submit`` sends to a cluster."""

import inspect
import json
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from typer.testing import CliRunner

from image_finetune.config import Params, load_params
from pipelines import cli
from pipelines.pipeline import Deployment, compile_pipeline

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.com/ml/image-finetune:1.2.3"
PipelineSpec = pipeline_spec_pb2.PipelineSpec
DagSpec = pipeline_spec_pb2.DagSpec
ALL_COMPLETED = pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.ALL_UPSTREAM_TASKS_COMPLETED


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(ROOT / "params.yaml", use_env=False)


def compiled(folder: Path, params: Params, gpus: int = 1) -> PipelineSpec:
    """Compile to YAML, as the ``compile`` command does, and parse it into the protobuf."""
    path = folder / "pipeline.yaml"
    compile_pipeline(params, str(path), Deployment(image=IMAGE, gpus=gpus), git_commit="abc123")
    return json_format.ParseDict(yaml.safe_load(path.read_text()), PipelineSpec())


@pytest.fixture(scope="module")
def spec(params, tmp_path_factory) -> PipelineSpec:
    """The pipeline for the repository's params.yaml."""
    return compiled(tmp_path_factory.mktemp("spec"), params)


@pytest.fixture(scope="module")
def three_rungs(params, tmp_path_factory) -> PipelineSpec:
    """The pipeline for a three-rung ladder: two nested levels of retries."""
    raw = params.model_dump(mode="json", by_alias=True)
    raw["train"]["ladder"].append({**raw["train"]["ladder"][-1], "name": "more-blocks"})
    return compiled(tmp_path_factory.mktemp("three"), Params.model_validate(raw))


def dag_of(spec: PipelineSpec, task: pipeline_spec_pb2.PipelineTaskSpec) -> DagSpec:
    return spec.components[task.component_ref.name].dag


def by_name(dag: DagSpec) -> dict[str, pipeline_spec_pb2.PipelineTaskSpec]:
    """A DAG's tasks by display name."""
    return {task.task_info.name: task for task in dag.tasks.values()}


def body(spec: PipelineSpec) -> DagSpec:
    """The DAG inside the exit handler: the run itself."""
    return dag_of(spec, spec.root.dag.tasks["exit-handler-1"])


def branches(spec: PipelineSpec, dag: DagSpec) -> dict[str, pipeline_spec_pb2.PipelineTaskSpec]:
    """The If/Else branches of a DAG's (single) condition group, by name."""
    [group] = [task for key, task in dag.tasks.items() if key.startswith("condition-branches")]
    return by_name(dag_of(spec, group))


def executor(spec: PipelineSpec, task: pipeline_spec_pb2.PipelineTaskSpec) -> dict:
    label = spec.components[task.component_ref.name].executor_label
    return json_format.MessageToDict(spec.deployment_spec)["executors"][label]["container"]


def container_tasks(spec: PipelineSpec, dag: DagSpec):
    """Every container task in a DAG and the DAGs nested in it."""
    for task in dag.tasks.values():
        if spec.components[task.component_ref.name].WhichOneof("implementation") == "dag":
            yield from container_tasks(spec, dag_of(spec, task))
        else:
            yield task


def test_parameters_are_the_params_yaml_sections(spec, params):
    inputs = spec.root.input_definitions.parameters
    sections = params.model_dump(mode="json", by_alias=True)
    assert set(inputs) == {*sections, "cache_dir"}
    for name, section in sections.items():
        assert json.loads(inputs[name].default_value.string_value) == section
    assert inputs["cache_dir"].default_value.string_value == ""


# What each dvc.yaml stage is called in the Kubeflow run (the train stage is rung 0's three
# tasks in the outer DAG; later rungs nest under the retry branches).
# locate-sources is DVC's record of the data and weights: KFP's ingest and train choose them
# themselves (image_finetune.locate) and KFP's cache keys on the parameters.
KFP_TASKS = {"locate-sources": [], "ingest": ["ingest"], "validate": ["validate the data"],
             "augment": ["preview the augmentation"],
             "train": ["train rung 0 (frozen-head)", "evaluate rung 0 on validation",
                       "gate rung 0"],
             "evaluate": ["evaluate the winner on test"], "gate": ["final gate on test"],
             "register": ["register and promote"]}


def test_steps_run_in_the_order_of_dvc_repro(spec):
    stages = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert set(stages) == set(KFP_TASKS)
    order = ["check params", *(task for stage in stages for task in KFP_TASKS[stage])]
    tasks = by_name(body(spec))
    key = {task.task_info.name: name for name, task in body(spec).tasks.items()}
    for before, after in zip(order, order[1:], strict=False):
        assert key[before] in tasks[after].dependent_tasks, f"{after} must wait for {before}"


def test_the_exit_handler_records_the_final_status_of_the_run(spec):
    root = spec.root.dag.tasks
    assert set(root) == {"exit-handler-1", "record-status"}
    status = root["record-status"]
    assert status.trigger_policy.strategy == ALL_COMPLETED
    assert status.inputs.parameters["status"].task_final_status.producer_task == "exit-handler-1"


def test_a_failed_gate_opens_the_next_attempt_and_a_passed_one_hands_the_model_on(spec):
    first = branches(spec, body(spec))
    failed, passed = first["rung-0-failed"], first["rung-0-passed"]
    gate_output = "inputs.parameter_values['pipelinechannel--gate-attempt-passed']"
    assert failed.trigger_policy.condition == f"{gate_output} == false"
    assert passed.trigger_policy.condition == f"!({gate_output} == false)"
    assert set(by_name(dag_of(spec, failed))) == {"retrain with rung 1 (top-blocks)"}
    assert set(by_name(dag_of(spec, passed))) == {"hand rung 0 on"}
    retry = by_name(dag_of(spec, failed))["retrain with rung 1 (top-blocks)"]
    last = by_name(dag_of(spec, retry))
    assert set(last) == {"train rung 1 (top-blocks)", "evaluate rung 1 on validation",
                         "gate rung 1"}
    warm_start = last["train rung 1 (top-blocks)"].inputs.artifacts["warm_start"]
    assert warm_start.component_input_artifact == "warm_start"
    previous = last["gate rung 1"].inputs.artifacts["previous"]  # the loop's record so far
    assert previous.component_input_artifact == "previous"


def test_the_loop_unrolls_one_nested_attempt_per_rung(three_rungs):
    spec = three_rungs
    indices, gates, dag = [], [], body(spec)
    while True:
        tasks = by_name(dag)
        train = next(t for name, t in tasks.items() if name.startswith("train rung"))
        gate = next(t for name, t in tasks.items() if name.startswith("gate rung"))
        indices.append(train.inputs.parameters["index"].runtime_value.constant.number_value)
        gates.append({name: gate.inputs.parameters[name].runtime_value.constant
                      for name in ("index", "rungs")})
        if not any(key.startswith("condition-branches") for key in dag.tasks):
            break
        failed = next(t for name, t in branches(spec, dag).items() if name.endswith("failed"))
        [retry] = dag_of(spec, failed).tasks.values()
        dag = dag_of(spec, retry)
    assert indices == [0, 1, 2]
    # Each gate knows its place in the ladder: only the last rung's failure ends the run.
    assert [(g["index"].number_value, g["rungs"].number_value) for g in gates] == [
        (0, 3), (1, 3), (2, 3)]


def test_one_of_hands_the_winning_classifier_to_the_test_evaluation(spec):
    dag = body(spec)
    [group] = [key for key in dag.tasks if key.startswith("condition-branches")]
    [(name, output)] = dag_of(spec, dag.tasks[group]).outputs.artifacts.items()
    assert {s.producer_subtask for s in output.artifact_selectors} == {
        key for key, task in dag_of(spec, dag.tasks[group]).tasks.items()}
    tests = by_name(dag)["evaluate the winner on test"]
    source = tests.inputs.artifacts["classifier"].task_output_artifact
    assert (source.producer_task, source.output_artifact_key) == (group, name)
    assert tests.inputs.parameters["split"].runtime_value.constant.string_value == "test"


def test_training_runs_on_the_gpu_image_with_an_accelerator(spec):
    for task in container_tasks(spec, spec.root.dag):
        container = executor(spec, task)
        resources = container["resources"]
        assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"]
        if task.task_info.name.startswith("train rung"):
            assert container["image"] == f"{IMAGE}-gpu"
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "1"
        else:
            assert container["image"] == f"{IMAGE}-cpu"
            assert "accelerator" not in resources


def test_without_gpus_training_runs_on_the_cpu_image(params, tmp_path):
    spec = compiled(tmp_path, params, gpus=0)
    for task in container_tasks(spec, spec.root.dag):
        assert executor(spec, task)["image"] == f"{IMAGE}-cpu"
        assert "accelerator" not in executor(spec, task)["resources"]


def test_io_steps_retry_and_the_champion_dependent_steps_never_cache(spec):
    tasks = {task.task_info.name: task for task in container_tasks(spec, spec.root.dag)}
    io_steps = {"ingest", "final gate on test", "register and promote"}
    uncached = {"final gate on test", "register and promote", "record the final status"}
    for name, task in tasks.items():
        assert task.retry_policy.max_retry_count == (2 if name in io_steps else 0), name
        assert task.caching_options.enable_cache == (name not in uncached), name


def test_components_are_self_contained_lightweight_components(spec):
    """What kfp.local's subprocess runner needs, and what an image holding only the library
    runs: the source travels in the YAML, imports nothing from this repository but the
    library, and installs nothing."""
    for task in container_tasks(spec, spec.root.dag):
        command = " ".join(executor(spec, task)["command"])
        assert "kfp.dsl.executor_main" in command and "pip install" not in command
        assert "from components" not in command and "from pipelines" not in command
        assert "def read_params(" in command  # the shared helper is embedded


def test_submit_sends_the_overridden_sections_with_the_token_from_the_environment(monkeypatch):
    calls = {}

    import kfp

    real = kfp.Client

    class FakeClient:
        """Records the calls; accepts only what the real kfp.Client accepts."""

        def __init__(self, **kwargs):
            inspect.signature(real.__init__).bind(self, **kwargs)
            calls["client"] = kwargs

        def create_run_from_pipeline_func(self, pipeline, **kwargs):
            inspect.signature(real.create_run_from_pipeline_func).bind(self, pipeline, **kwargs)
            calls["run"] = kwargs
            return type("Result", (), {"run_id": "run-1"})()

    monkeypatch.setattr("kfp.Client", FakeClient)
    result = CliRunner().invoke(cli.app, [
        "submit", "--host", "https://kfp.example.com", "--namespace", "team-ml",
        "--experiment", "cifar", "--run-name", "try-1", "--params", str(ROOT / "params.yaml"),
        "--set", "gate.min_accuracy=0.9", "--service-account", "pipeline-runner",
    ], env={"KFP_TOKEN": "secret-token"})
    assert result.exit_code == 0, result.output
    assert calls["client"] == {"host": "https://kfp.example.com", "namespace": "team-ml",
                               "existing_token": "secret-token"}
    run = calls["run"]
    assert json.loads(run["arguments"]["gate"])["min_accuracy"] == 0.9
    assert (run["run_name"], run["experiment_name"], run["namespace"]) == (
        "try-1", "cifar", "team-ml")
    assert run["service_account"] == "pipeline-runner"
    assert "submitted run run-1" in result.output
