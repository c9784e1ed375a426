"""The compiled Kubeflow pipeline, parsed into KFP's PipelineSpec protobuf: its steps and
their order, the nested conditions of the retrain loop, the OneOf that hands the winner on,
the exit handler, resources, retries, caching, images, the typed parameters and their
defaults, and the Kubernetes settings (kfp-kubernetes' platform spec); what ``check-params``
hands on; and what ``compile`` and ``submit`` make of their options."""

import inspect
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2
from typer.testing import CliRunner

from image_finetune.components import check_params, set_rung
from image_finetune.config import Params, load_params
from image_finetune.errors import ConfigError
from image_finetune.knobs import merge_knobs, parse_sections
from image_finetune.pipelines import cli
from image_finetune.pipelines.deployment import (
    CACHE_PVC,
    CREDENTIAL_VARIABLES,
    CREDENTIALS_SECRET,
    Deployment,
)
from image_finetune.pipelines.pipeline import compile_pipeline, pipeline_arguments

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.com/ml/image-finetune:1.2.3"
PipelineSpec = pipeline_spec_pb2.PipelineSpec
DagSpec = pipeline_spec_pb2.DagSpec
ALL_COMPLETED = pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.ALL_UPSTREAM_TASKS_COMPLETED
ParameterType = pipeline_spec_pb2.ParameterType
KubernetesConfig = kubernetes_executor_config_pb2.KubernetesExecutorConfig
SECTIONS = (
    "data",
    "validate",
    "augment",
    "model",
    "train",
    "evaluate",
    "gate",
    "registry",
    "engine",
)


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(ROOT / "params.yaml", use_env=False)


def parsed(path: Path) -> tuple[PipelineSpec, dict[str, KubernetesConfig]]:
    """A compiled YAML: its pipeline spec and, from the second document that kfp-kubernetes
    adds, each executor's Kubernetes settings (none without that document)."""
    spec, *platform = yaml.safe_load_all(path.read_text())
    executors = (
        platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {}
    )
    return json_format.ParseDict(spec, PipelineSpec()), {
        label: json_format.ParseDict(config, KubernetesConfig())
        for label, config in executors.items()
    }


def invoke_compile(out: Path, *options: str):
    """``compile`` from params.yaml to ``out`` with ``options``: the CLI runner's result."""
    return CliRunner().invoke(
        cli.app, ["compile", "--params", str(ROOT / "params.yaml"), "--out", str(out), *options]
    )


def compile_with(tmp_path: Path, *options: str):
    """The pipeline compiled from params.yaml for IMAGE with ``options``, parsed."""
    out = tmp_path / "pipeline.yaml"
    result = invoke_compile(out, "--image", IMAGE, *options)
    assert result.exit_code == 0, result.output
    return parsed(out)


def compiled_with_platform(folder: Path, params: Params, **deployment):
    """Compile to YAML, as the ``compile`` command does, and parse both documents."""
    path = folder / "pipeline.yaml"
    compile_pipeline(params, str(path), Deployment(image=IMAGE, **deployment), git_commit="abc123")
    return parsed(path)


def compiled(folder: Path, params: Params, gpus: int = 1) -> PipelineSpec:
    return compiled_with_platform(folder, params, gpus=gpus)[0]


@pytest.fixture(scope="module")
def spec_and_platform(params, tmp_path_factory):
    """The pipeline for the repository's params.yaml, and its Kubernetes settings."""
    return compiled_with_platform(tmp_path_factory.mktemp("spec"), params)


@pytest.fixture(scope="module")
def spec(spec_and_platform) -> PipelineSpec:
    return spec_and_platform[0]


@pytest.fixture(scope="module")
def three_rungs_and_platform(params, tmp_path_factory):
    """The pipeline for a three-rung ladder: two nested levels of retries."""
    raw = params.model_dump(mode="json", by_alias=True)
    raw["train"]["ladder"].append({**raw["train"]["ladder"][-1], "name": "more-blocks"})
    return compiled_with_platform(tmp_path_factory.mktemp("three"), Params.model_validate(raw))


@pytest.fixture(scope="module")
def three_rungs(three_rungs_and_platform) -> PipelineSpec:
    return three_rungs_and_platform[0]


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


def expected_parameters(params: Params) -> dict[str, tuple[int, object]]:
    """Each pipeline parameter's type and default, written out from params.yaml."""
    gate, rungs = params.gate, params.train.ladder
    expected = {
        "data_path": (ParameterType.STRING, params.data.path),
        "backbone": (ParameterType.STRING, params.model.backbone),
        "model_image_size": (ParameterType.NUMBER_INTEGER, params.model.image_size),
        "min_accuracy": (ParameterType.NUMBER_DOUBLE, gate.min_accuracy),
        "min_macro_f1": (ParameterType.NUMBER_DOUBLE, gate.min_macro_f1),
        "min_class_recall": (ParameterType.NUMBER_DOUBLE, gate.min_class_recall),
        "max_latency_p95_ms": (ParameterType.NUMBER_DOUBLE, gate.max_latency_p95_ms),
        "cache_dir": (ParameterType.STRING, "/cache"),
    }
    for index, rung in enumerate(rungs):
        expected[f"rung{index}_epochs"] = (ParameterType.NUMBER_INTEGER, rung.epochs)
        expected[f"rung{index}_learning_rate"] = (ParameterType.NUMBER_DOUBLE, rung.learning_rate)
    return expected


def struct_defaults(spec: PipelineSpec) -> dict[str, dict]:
    """The section parameters' defaults, as a client reads them (numbers come back floats)."""
    inputs = spec.root.input_definitions.parameters
    return {
        name: json_format.MessageToDict(inputs[name].default_value.struct_value)
        for name in SECTIONS
    }


def test_the_knobs_are_typed_parameters_with_params_yaml_defaults(spec, params):
    inputs = spec.root.input_definitions.parameters
    expected = expected_parameters(params)
    assert set(inputs) == {*expected, *SECTIONS}
    for name, (kind, default) in expected.items():
        assert inputs[name].parameter_type == kind, name
        value = json_format.MessageToDict(inputs[name].default_value)
        assert value == default, name
    for name in SECTIONS:
        assert inputs[name].parameter_type == ParameterType.STRUCT, name
    # The run form says which rung a knob is for.
    assert inputs["rung1_epochs"].description == (
        "params.yaml train.ladder.1.epochs (rung top-blocks)"
    )


def test_the_sections_are_structs_without_nulls_or_knobs(spec):
    defaults = struct_defaults(spec)

    def nulls(value) -> int:
        if isinstance(value, dict):
            return sum(nulls(item) for item in value.values())
        if isinstance(value, list):
            return sum(nulls(item) for item in value)
        return value is None

    assert sum(nulls(section) for section in defaults.values()) == 0
    assert "max_per_class" not in defaults["data"]  # null in params.yaml: its default
    assert "path" not in defaults["data"] and "backbone" not in defaults["model"]
    assert defaults["gate"] == {"significance": 0.05}
    for rung in defaults["train"]["ladder"]:
        assert not {"epochs", "learning_rate"} & set(rung), rung


@pytest.mark.parametrize("name", ["params.yaml", "params-gpu.yaml"])
def test_the_defaults_give_back_the_params_the_pipeline_was_compiled_from(name, tmp_path):
    """As a client sends them: the structs' integers as floats, the knobs merged back. The
    GPU profile's ``cache_boundary: null`` (whose config default is not null) survives."""
    params = load_params(ROOT / name, use_env=False)
    spec = compiled(tmp_path, params)
    inputs = spec.root.input_definitions.parameters
    knobs = {
        name: json_format.MessageToDict(inputs[name].default_value)
        for name in inputs
        if name not in SECTIONS and name != "cache_dir"
    }
    assert parse_sections(merge_knobs(struct_defaults(spec), knobs), name) == params


def test_the_pipeline_has_a_display_name_and_a_description(spec):
    assert spec.pipeline_info.name == "image-finetune"
    assert spec.pipeline_info.display_name == "Image classifier fine-tuning"
    assert spec.pipeline_info.description.startswith("Fine-tune a pretrained CNN")


# What each dvc.yaml stage is called in the Kubeflow run (the train stage is rung 0's three
# tasks in the outer DAG; later rungs nest under the retry branches).
# locate-sources is DVC's record of the data and weights: KFP's ingest and train choose them
# themselves (image_finetune.locate) and KFP's cache keys on the parameters.
KFP_TASKS = {
    "locate-sources": [],
    "ingest": ["ingest"],
    "validate": ["validate the data"],
    "augment": ["preview the augmentation"],
    "train": ["train rung 0 (frozen-head)", "evaluate rung 0 on validation", "gate rung 0"],
    "export-engine": ["export the engine"],
    "evaluate": ["evaluate the winner on test"],
    "gate": ["final gate on test"],
    "profile": ["profile the winner on validation"],
    "register": ["register and promote"],
}


def test_steps_run_in_the_order_of_dvc_repro(spec):
    stages = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert set(stages) == set(KFP_TASKS)
    order = [
        "set rung 0 (frozen-head)",
        "set rung 1 (top-blocks)",
        "check params",
        *(task for stage in stages for task in KFP_TASKS[stage]),
    ]
    tasks = by_name(body(spec))
    key = {task.task_info.name: name for name, task in body(spec).tasks.items()}
    for before, after in zip(order, order[1:], strict=False):
        assert key[before] in tasks[after].dependent_tasks, f"{after} must wait for {before}"


def source(task: pipeline_spec_pb2.PipelineTaskSpec, name: str) -> str:
    """Where a task's parameter comes from: the enclosing DAG's input, or producer.output."""
    value = task.inputs.parameters[name]
    if value.HasField("task_output_parameter"):
        output = value.task_output_parameter
        return f"{output.producer_task}.{output.output_parameter_key}"
    return value.component_input_parameter.removeprefix("pipelinechannel--")


def test_the_knobs_go_back_into_their_sections_before_any_step_reads_them(spec):
    tasks, dag = by_name(body(spec)), body(spec)
    key = {task.task_info.name: name for name, task in dag.tasks.items()}
    first, second = tasks["set rung 0 (frozen-head)"], tasks["set rung 1 (top-blocks)"]
    assert [source(first, name) for name in ("train", "epochs", "learning_rate")] == [
        "train",
        "rung0_epochs",
        "rung0_learning_rate",
    ]
    assert [source(second, name) for name in ("train", "epochs", "learning_rate")] == [
        f"{key['set rung 0 (frozen-head)']}.Output",
        "rung1_epochs",
        "rung1_learning_rate",
    ]
    checked = tasks["check params"]
    assert source(checked, "train") == f"{key['set rung 1 (top-blocks)']}.Output"
    for name in ("data", "model", "gate", "data_path", "backbone", "min_accuracy"):
        assert source(checked, name) == name
    # Every later step reads the checked sections: what it runs with is what was validated.
    check = key["check params"]
    readers = [
        task
        for task in dag.tasks.values()
        if task.task_info.name
        not in {"check params", *(n for n in tasks if n.startswith("set rung"))}
    ]
    read = {
        (task.task_info.name, name): source(task, name)
        for task in readers
        for name in set(task.inputs.parameters) & set(SECTIONS)
    }
    assert len(read) == 29 and all(f == f"{check}.{name}" for (_, name), f in read.items())
    retry = by_name(dag_of(spec, branches(spec, dag)["rung-0-failed"]))[
        "retrain with rung 1 (top-blocks)"
    ]
    assert source(retry, "gate") == f"{check}-gate"  # check's output, into the branch
    assert source(by_name(dag_of(spec, retry))["gate rung 1"], "gate") == "gate"


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
    assert set(last) == {
        "train rung 1 (top-blocks)",
        "evaluate rung 1 on validation",
        "gate rung 1",
    }
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
        gates.append(
            {
                name: gate.inputs.parameters[name].runtime_value.constant
                for name in ("index", "rungs")
            }
        )
        if not any(key.startswith("condition-branches") for key in dag.tasks):
            break
        failed = next(t for name, t in branches(spec, dag).items() if name.endswith("failed"))
        [retry] = dag_of(spec, failed).tasks.values()
        dag = dag_of(spec, retry)
    assert indices == [0, 1, 2]
    # Each gate knows its place in the ladder: only the last rung's failure ends the run.
    assert [(g["index"].number_value, g["rungs"].number_value) for g in gates] == [
        (0, 3),
        (1, 3),
        (2, 3),
    ]


def test_one_of_hands_the_winning_classifier_to_the_test_evaluation(spec):
    dag = body(spec)
    [group] = [key for key in dag.tasks if key.startswith("condition-branches")]
    [(name, output)] = dag_of(spec, dag.tasks[group]).outputs.artifacts.items()
    assert {s.producer_subtask for s in output.artifact_selectors} == {
        key for key, task in dag_of(spec, dag.tasks[group]).tasks.items()
    }
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


def test_io_steps_and_training_retry_and_the_champion_dependent_steps_never_cache(spec):
    tasks = {task.task_info.name: task for task in container_tasks(spec, spec.root.dag)}
    # Training resumes from its checkpoint on the cache volume: a retry loses little.
    retried = {"ingest", "final gate on test", "register and promote"} | {
        name for name in tasks if name.startswith("train rung")
    }
    uncached = {"final gate on test", "register and promote", "record the final status"}
    for name, task in tasks.items():
        assert task.retry_policy.max_retry_count == (2 if name in retried else 0), name
        assert task.caching_options.enable_cache == (name not in uncached), name


def test_components_are_self_contained_lightweight_components(spec):
    """What kfp.local's subprocess runner needs, and what an image holding only the library
    runs: the source travels in the YAML, imports nothing from this repository but the
    library, and installs nothing."""
    for task in container_tasks(spec, spec.root.dag):
        command = " ".join(executor(spec, task)["command"])
        assert "kfp.dsl.executor_main" in command and "pip install" not in command
        assert not any(
            f"{package} import" in command or f"{package}." in command
            for package in ("image_finetune.components", "image_finetune.pipelines")
        )
        assert "def read_params(" in command  # the shared helper is embedded


def kubernetes_settings(spec: PipelineSpec, platform: dict[str, KubernetesConfig]) -> dict:
    """Each container task's Kubernetes settings, by display name; tasks without are left out."""
    settings = {}
    for task in container_tasks(spec, spec.root.dag):
        label = spec.components[task.component_ref.name].executor_label
        if label in platform:
            settings[task.task_info.name] = platform[label]
    return settings


def constant(parameter) -> str:
    return parameter.runtime_value.constant.string_value


def test_the_mlflow_steps_and_only_they_get_the_credentials_from_the_secret(spec_and_platform):
    settings = kubernetes_settings(*spec_and_platform)
    with_secret = {name for name, config in settings.items() if config.secret_as_env}
    assert with_secret == {"final gate on test", "register and promote"}
    for name in with_secret:
        [secret] = settings[name].secret_as_env
        assert constant(secret.secret_name_parameter) == "mlflow-client"
        # Each key optional: a server wants a token or a user and password, not all three.
        assert secret.optional
        assert {(key.secret_key, key.env_var) for key in secret.key_to_env} == {
            (variable, variable) for variable in CREDENTIAL_VARIABLES
        }
        assert not settings[name].pvc_mount


def test_the_cache_volume_is_mounted_on_every_training_task_and_no_other(three_rungs_and_platform):
    spec, platform = three_rungs_and_platform
    settings = kubernetes_settings(spec, platform)
    mounted = {name: config.pvc_mount for name, config in settings.items() if config.pvc_mount}
    training = {
        task.task_info.name
        for task in container_tasks(spec, spec.root.dag)
        if task.task_info.name.startswith("train rung")
    }
    assert set(mounted) == training and len(training) == 3
    for name, mounts in mounted.items():
        [mount] = mounts
        assert (mount.mount_path, constant(mount.pvc_name_parameter)) == (
            "/cache",
            "image-finetune-cache",
        )
        assert not settings[name].secret_as_env, name
    cache_dir = spec.root.input_definitions.parameters["cache_dir"]
    assert cache_dir.default_value.string_value == "/cache"  # where the volume is


@pytest.mark.parametrize("off", ["credentials_secret", "cache_pvc"])
def test_each_kubernetes_setting_can_be_turned_off(off, params, tmp_path):
    spec, platform = compiled_with_platform(tmp_path, params, **{off: None})
    settings = kubernetes_settings(spec, platform).values()
    secrets = [config for config in settings if config.secret_as_env]
    mounts = [config for config in settings if config.pvc_mount]
    assert (len(secrets), len(mounts)) == ((0, 2) if off == "credentials_secret" else (2, 0))
    cache_dir = spec.root.input_definitions.parameters["cache_dir"].default_value.string_value
    assert cache_dir == ("" if off == "cache_pvc" else "/cache")


def test_the_default_secret_and_claim_are_the_ones_infra_names():
    manifests = ROOT / "infra" / "k8s"
    cache = manifests / "components" / "pipeline" / "pipeline-cache.yaml"
    [claim] = [
        doc
        for doc in yaml.safe_load_all(cache.read_text())
        if doc and doc["kind"] == "PersistentVolumeClaim"
    ]
    assert claim["metadata"]["name"] == CACHE_PVC
    serving = yaml.safe_load_all((manifests / "base" / "serving.yaml").read_text())
    [deployment] = [doc for doc in serving if doc and doc["kind"] == "Deployment"]
    [server] = deployment["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": CREDENTIALS_SECRET}} in server["envFrom"]


@pytest.mark.parametrize("secret,claim", [("team-mlflow", ""), ("", "team-cache")])
def test_compile_names_the_secret_and_the_claim_or_none(secret, claim, tmp_path):
    compiled = compile_with(tmp_path, "--credentials-secret", secret, "--cache-pvc", claim)
    settings = kubernetes_settings(*compiled).values()
    assert {constant(s.secret_name_parameter) for c in settings for s in c.secret_as_env} == (
        {secret} if secret else set()
    )
    assert {constant(m.pvc_name_parameter) for c in settings for m in c.pvc_mount} == (
        {claim} if claim else set()
    )


def run_the_check(arguments: dict, rungs: int) -> dict[str, dict]:
    """set rung 0..n-1 -> check params, in this process, on the pipeline's arguments: what
    the later steps receive."""
    arguments = dict(arguments)
    train = arguments.pop("train")
    for index in range(rungs):
        train = set_rung.python_func(
            index=index,
            train=train,
            epochs=arguments.pop(f"rung{index}_epochs"),
            learning_rate=arguments.pop(f"rung{index}_learning_rate"),
        )
    arguments.pop("cache_dir", None)
    return dict(
        zip(SECTIONS, check_params.python_func(rungs=rungs, train=train, **arguments), strict=True)
    )


def test_knobs_typed_in_the_run_form_are_what_the_steps_run_with(params):
    typed = {
        "min_accuracy": 0.9,
        "rung1_epochs": 6,
        "backbone": "resnet50",
        "data_path": "/data/cifar10.tar.gz",
    }
    checked = run_the_check({**pipeline_arguments(params), **typed}, rungs=2)
    raw = params.model_dump(mode="json", by_alias=True)
    raw["gate"]["min_accuracy"], raw["train"]["ladder"][1]["epochs"] = 0.9, 6
    raw["model"]["backbone"], raw["data"]["path"] = "resnet50", "/data/cifar10.tar.gz"
    assert parse_sections(checked, "checked sections") == Params.model_validate(raw)


def test_a_bad_knob_fails_the_check_naming_its_params_yaml_key(params):
    with pytest.raises(ConfigError, match=r"train\.ladder\.1\.epochs: Input should be greater"):
        run_the_check({**pipeline_arguments(params), "rung1_epochs": 0}, rungs=2)


def as_floats(value):
    """A mapping as a KFP cluster hands it to a task: a protobuf Struct's numbers are floats."""
    if isinstance(value, dict):
        return {key: as_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_floats(item) for item in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def test_the_same_values_written_differently_check_to_the_same_sections(params):
    """The later steps' cache keys change only when a value does."""
    arguments = pipeline_arguments(params)
    rewritten = {
        name: as_floats(value) if name in SECTIONS else value for name, value in arguments.items()
    }
    del rewritten["evaluate"]["flip_tta"]  # its default, left out
    assert rewritten != arguments
    assert run_the_check(rewritten, rungs=2) == run_the_check(arguments, rungs=2)


def test_submit_sends_the_overridden_params_with_the_token_from_the_environment(
    monkeypatch, params
):
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
    result = CliRunner().invoke(
        cli.app,
        [
            "submit",
            "--host",
            "https://kfp.example.com",
            "--namespace",
            "team-ml",
            "--experiment",
            "cifar",
            "--run-name",
            "try-1",
            "--params",
            str(ROOT / "params.yaml"),
            "--set",
            "gate.min_accuracy=0.9",
            "--set",
            "train.ladder.1.epochs=6",
            "--service-account",
            "pipeline-runner",
        ],
        env={"KFP_TOKEN": "secret-token"},
    )
    assert result.exit_code == 0, result.output
    assert calls["client"] == {
        "host": "https://kfp.example.com",
        "namespace": "team-ml",
        "existing_token": "secret-token",
    }
    run = calls["run"]
    assert (run["arguments"]["min_accuracy"], run["arguments"]["rung1_epochs"]) == (0.9, 6)
    raw = params.model_dump(mode="json", by_alias=True)
    raw["gate"]["min_accuracy"], raw["train"]["ladder"][1]["epochs"] = 0.9, 6
    # Every parameter but cache_dir, whose default is the cache volume's mount.
    assert "cache_dir" not in run["arguments"]
    assert run["arguments"] == pipeline_arguments(Params.model_validate(raw))
    assert (run["run_name"], run["experiment_name"], run["namespace"]) == (
        "try-1",
        "cifar",
        "team-ml",
    )
    assert run["service_account"] == "pipeline-runner"
    assert "submitted run run-1" in result.output
