"""The Kubeflow Trainer v2 launcher: the ``TrainJob`` manifest against the vendored CRD
(tests/fixtures/crds/trainer.kubeflow.org_trainjobs.yaml), our ClusterTrainingRuntime against
its CRD and its pod against the Kubernetes API's PodSpec, the worker addresses a TrainJob's
nodes make ``TF_CONFIG`` from, the job's states, and the pipeline compiled with
``--launcher trainjob``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from google.protobuf import json_format

from image_finetune.errors import ConfigError
from image_finetune.training.distribute import (
    export_jobset_cluster,
    jobset_tf_config,
    read_cluster,
)
from image_finetune.training.job_spec import (
    TFJOB,
    TRAINJOB,
    Placement,
    TrainJobError,
    job_kind,
    job_manifest,
    job_state,
    trainjob_manifest,
    worker_hosts,
)
from tests.crds import validate_custom_resource
from tests.unit.test_train_job import KUBERNETES, a_job, validate_tfjob
from tests.unit.test_train_job_spec import compile_with, training_tasks

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "infra" / "k8s" / "trainer" / "cluster-training-runtime.yaml"


def node_patch(manifest: dict) -> dict:
    """The pod spec our runtime patch gives each node."""
    [patch] = manifest["spec"]["runtimePatches"]
    [node] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    return node["template"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("workers,gpus,warm_start", [(2, 1, True), (4, 0, False), (8, 8, True)])
def test_the_trainjob_is_valid_against_trainer_v2s_crd(workers, gpus, warm_start):
    job = a_job(workers, gpus, warm_start)
    manifest = trainjob_manifest(job, "team-ml", "image-finetune-tensorflow")
    validate_custom_resource(manifest)
    trainer = manifest["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["image"]) == (workers, job.image)
    assert trainer["command"][:2] == ["image-finetune", "train-rung"]
    assert trainer["resourcesPerNode"]["limits"] == ({"nvidia.com/gpu": gpus} if gpus else {})
    assert manifest["spec"]["runtimeRef"] == {
        "name": "image-finetune-tensorflow",
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
    }
    pod = node_patch(manifest)
    assert pod["volumes"] == [
        {"name": "cache", "persistentVolumeClaim": {"claimName": "image-finetune-cache"}}
    ]
    assert pod["containers"] == [
        {"name": "node", "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}
    ]


@pytest.mark.parametrize(
    "breakage",
    [
        lambda m: m["spec"]["trainer"].update(numNodes="two"),
        lambda m: m["spec"]["trainer"].update(replicas=2),
        lambda m: m["spec"].update(runtime=m["spec"].pop("runtimeRef")),
        lambda m: node_patch(m)["volumes"][0].update(pvc={"claimName": "x"}),
    ],
    ids=[
        "nodes-not-a-number",
        "unknown-trainer-field",
        "misspelt-runtime-ref",
        "unknown-volume-source",
    ],
)
def test_a_broken_trainjob_fails_validation(breakage):
    """The schema is strict enough to catch what a typo would break."""
    manifest = trainjob_manifest(a_job(), "team-ml", "image-finetune-tensorflow")
    breakage(manifest)
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(manifest)


def test_the_launcher_flag_chooses_the_manifest():
    job = a_job()
    assert job_manifest(job, "ns", "trainjob", "rt")["kind"] == "TrainJob"
    tfjob = job_manifest(job, "ns", "tfjob", "rt")
    validate_tfjob(tfjob)
    assert (job_kind("tfjob"), job_kind("trainjob")) == (TFJOB, TRAINJOB)
    with pytest.raises(TrainJobError, match="launcher 'mpijob'"):
        job_kind("mpijob")


def test_the_cluster_training_runtime_is_valid_and_runs_the_nodes_the_launcher_names():
    [runtime] = [doc for doc in yaml.safe_load_all(RUNTIME.read_text()) if doc]
    validate_custom_resource(runtime)
    [node] = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"  # the replicated job the TrainJob's patch and labels name
    template = node["template"]["spec"]["template"]
    kubernetes_validate.validate(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "node-0"},
            "spec": template["spec"],
        },
        KUBERNETES,
        strict=True,
    )
    [container] = template["spec"]["containers"]
    assert container["name"] == "node"
    assert {"name": "tf-worker", "containerPort": 2222} in container["ports"]
    assert runtime["spec"]["template"]["spec"]["network"]["enableDNSHostnames"] is True


def test_each_node_makes_its_tf_config_from_the_worker_list_and_its_index():
    job = a_job(workers=3)
    hosts = worker_hosts(job)
    assert hosts[0] == f"{job.name}-node-0-0.{job.name}:2222" and len(hosts) == 3
    [env] = [
        e
        for e in trainjob_manifest(job, "ns", "rt")["spec"]["trainer"]["env"]
        if e["name"] == "IMAGE_FINETUNE_WORKER_HOSTS"
    ]
    environ = {"IMAGE_FINETUNE_WORKER_HOSTS": env["value"], "JOB_COMPLETION_INDEX": "2"}
    config = json.loads(jobset_tf_config(environ))
    assert config == {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": 2}}
    export_jobset_cluster(environ)
    assert read_cluster(environ).index == 2 and read_cluster(environ).workers == 3


def test_a_tfjobs_own_tf_config_wins_and_a_bad_index_is_refused():
    tf_config = json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}})
    environ = {
        "TF_CONFIG": tf_config,
        "IMAGE_FINETUNE_WORKER_HOSTS": "b:1,c:1",
        "JOB_COMPLETION_INDEX": "1",
    }
    export_jobset_cluster(environ)
    assert environ["TF_CONFIG"] == tf_config
    assert jobset_tf_config({}) is None
    with pytest.raises(ConfigError, match="JOB_COMPLETION_INDEX='5'"):
        jobset_tf_config({"IMAGE_FINETUNE_WORKER_HOSTS": "b:1,c:1", "JOB_COMPLETION_INDEX": "5"})


@pytest.mark.parametrize(
    "conditions,phase,succeeded",
    [
        ([{"type": "Created", "status": "True"}], "Created", False),
        (
            [
                {"type": "Created", "status": "True"},
                {"type": "Complete", "status": "True", "reason": "JobSetCompleted"},
            ],
            "Succeeded",
            True,
        ),
        ([{"type": "Failed", "status": "True", "message": "node-0 OOMKilled"}], "Failed", False),
    ],
)
def test_trainer_v2s_conditions_read_as_the_job_state(conditions, phase, succeeded):
    state = job_state({"conditions": conditions})
    assert (state.phase, state.succeeded) == (phase, succeeded)


def test_the_pipeline_compiled_with_the_trainjob_launcher_passes_it_to_every_launcher(tmp_path):
    spec, _ = compile_with(
        tmp_path,
        "--workers",
        "2",
        "--launcher",
        "trainjob",
        "--runtime",
        "team-tf",
        "--train-timeout",
        "7200",
    )
    for name, task in training_tasks(spec).items():
        inputs = {
            key: json_format.MessageToDict(task.inputs.parameters[key].runtime_value.constant)
            for key in ("launcher", "runtime", "timeout_seconds")
        }
        assert inputs == {"launcher": "trainjob", "runtime": "team-tf", "timeout_seconds": 7200}, (
            name
        )


def test_the_launchers_role_lets_it_create_follow_and_delete_trainjobs():
    rbac = ROOT / "infra" / "k8s" / "components" / "pipeline" / "train-job-rbac.yaml"
    [role] = [doc for doc in yaml.safe_load_all(rbac.read_text()) if doc and doc["kind"] == "Role"]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert {(TRAINJOB.group, TRAINJOB.plural, verb) for verb in ("create", "get", "delete")} <= (
        granted
    )


@pytest.mark.parametrize("launcher", ["tfjob", "trainjob"])
def test_a_distributed_jobs_gpu_pods_tolerate_the_taint_and_select_the_nodes(launcher):
    placement = Placement(
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
        (("pool", "l4"),),
    )
    job = dataclasses.replace(a_job(), placement=placement)
    manifest = job_manifest(job, "team-ml", launcher, "image-finetune-tensorflow")
    if launcher == "trainjob":
        validate_custom_resource(manifest)
        pod = node_patch(manifest)
    else:
        validate_tfjob(manifest)
        pod = manifest["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    assert pod["tolerations"] == [dict(placement.tolerations[0])]
    assert pod["nodeSelector"] == {"pool": "l4"}


def test_the_compiled_launcher_passes_the_gpu_placement_on(tmp_path):
    spec, _ = compile_with(tmp_path, "--workers", "2", "--node-selector", "pool=l4")
    for name, task in training_tasks(spec).items():
        inputs = {
            key: json_format.MessageToDict(task.inputs.parameters[key].runtime_value.constant)
            for key in ("tolerations", "node_selector")
        }
        assert inputs == {
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "node_selector": {"pool": "l4"},
        }, name
