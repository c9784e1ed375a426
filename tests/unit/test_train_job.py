"""A rung as a distributed TFJob: the manifest, valid against the training operator's CRD
(tests/fixtures/crds, strict: no unknown fields) and its pod template against the Kubernetes
API's schemas; what the job's conditions and its chief's log become in the task's log; and
the launcher's calls, made with the real kubernetes client against a stand-in API server."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml

from image_finetune.cli import app
from image_finetune.training.job_spec import (
    JobState,
    LogCursor,
    TrainJob,
    job_name,
    job_state,
    new_log_lines,
    tfjob_manifest,
    worker_command,
)
from tests.crds import definitions

ROOT = Path(__file__).resolve().parents[2]
RBAC = ROOT / "infra" / "k8s" / "components" / "pipeline" / "train-job-rbac.yaml"
KUBERNETES = "1.30.0"
# A TFJob's name is a DNS-1035 label: the operator names services after it.
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def a_job(workers: int = 2, gpus: int = 1, warm_start: bool = True) -> TrainJob:
    run_id = "0b6f2a4e-7c1d-4f8e-9a3b-5d2c1e0f9a87"
    return TrainJob(
        name=job_name(run_id, 1),
        run_id=run_id,
        index=1,
        workers=workers,
        gpus=gpus,
        image="registry.example.com/ml/image-finetune:1.2.3-gpu",
        claim="image-finetune-cache",
        mount="/cache",
        cache="/cache",
        warm_start=warm_start,
    )


def crd_schema() -> tuple[dict, dict]:
    """The TFJob CRD, and its v1 schema made strict."""
    return definitions()[("kubeflow.org/v1", "TFJob")]


def validate_tfjob(manifest: dict) -> None:
    """What the API server checks of a TFJob: group, version and kind, the name, and the
    CRD's schema; the pod template as the Pod it becomes."""
    crd, schema = crd_schema()
    assert manifest["apiVersion"] == f"{crd['spec']['group']}/v1"
    assert manifest["kind"] == crd["spec"]["names"]["kind"]
    name = manifest["metadata"]["name"]
    assert DNS_1035.fullmatch(name) and len(f"{name}-worker-99") <= 63, name
    jsonschema.validate(manifest, schema)
    for replica in manifest["spec"]["tfReplicaSpecs"].values():
        template = replica["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-worker-0", **template["metadata"]},
            "spec": template["spec"],
        }
        kubernetes_validate.validate(pod, KUBERNETES, strict=True)


@pytest.mark.parametrize("workers,gpus,warm_start", [(2, 1, True), (4, 0, False), (8, 8, True)])
def test_the_manifest_is_valid_against_the_operators_crd(workers, gpus, warm_start):
    validate_tfjob(tfjob_manifest(a_job(workers, gpus, warm_start), "team-ml"))


@pytest.mark.parametrize(
    "breakage",
    [
        lambda m: m["spec"]["tfReplicaSpecs"]["Worker"].update(replicas="two"),
        lambda m: m["spec"].update(tfReplicaSpec=m["spec"].pop("tfReplicaSpecs")),
        lambda m: m["spec"]["runPolicy"].update(cleanPodPolicies="All"),
        lambda m: m["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"].update(
            containers=[{"name": "tensorflow", "image": "x", "gpus": 1}]
        ),
    ],
    ids=[
        "replicas-not-a-number",
        "misspelled-replica-specs",
        "unknown-run-policy-field",
        "unknown-container-field",
    ],
)
def test_a_broken_manifest_fails_validation(breakage):
    manifest = tfjob_manifest(a_job(), "team-ml")
    breakage(manifest)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate_tfjob(manifest)


def test_the_job_runs_n_workers_of_the_training_image_on_the_cache_volume():
    job = a_job(workers=3, gpus=2)
    manifest = tfjob_manifest(job, "team-ml")
    assert manifest["metadata"]["namespace"] == "team-ml"
    assert manifest["spec"]["runPolicy"] == {
        "cleanPodPolicy": "Running",
        "backoffLimit": 3,
        "ttlSecondsAfterFinished": 86400,
    }
    [(kind, replica)] = manifest["spec"]["tfReplicaSpecs"].items()
    assert (kind, replica["replicas"], replica["restartPolicy"]) == ("Worker", 3, "OnFailure")
    pod = replica["template"]["spec"]
    [container] = pod["containers"]
    assert container["name"] == "tensorflow"  # where the operator puts TF_CONFIG
    assert container["image"] == job.image
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert {"name": "KERAS_BACKEND", "value": "tensorflow"} in container["env"]
    [mount], [volume] = container["volumeMounts"], pod["volumes"]
    assert mount == {"name": volume["name"], "mountPath": "/cache"}
    assert volume["persistentVolumeClaim"] == {"claimName": "image-finetune-cache"}
    cpu_only = tfjob_manifest(a_job(gpus=0), "team-ml")["spec"]["tfReplicaSpecs"]["Worker"]
    assert cpu_only["template"]["spec"]["containers"][0]["resources"]["limits"] == {}


def test_each_worker_runs_the_train_rung_command_on_the_staged_inputs():
    command = worker_command(a_job())
    assert command[:2] == ["image-finetune", "train-rung"]
    train_rung = typer.main.get_command(app).commands["train-rung"]
    options = {opt for param in train_rung.params for opt in param.opts}
    flags = dict(zip(command[2::2], command[3::2], strict=True))
    assert set(flags) == options - {"-p"}
    folder = f"/cache/jobs/{a_job().name}"
    assert flags == {
        "--params": f"{folder}/params.yaml",
        "--index": "1",
        "--data": f"{folder}/data",
        "--out": f"{folder}/out",
        "--cache": "/cache",
        "--warm-start": f"{folder}/warm_start/model.keras",
    }
    assert "--warm-start" not in worker_command(a_job(warm_start=False))


def test_a_job_name_is_stable_per_run_and_rung_and_distinct_otherwise():
    assert job_name("run-a", 0) == job_name("run-a", 0)
    assert len({job_name("run-a", 0), job_name("run-a", 1), job_name("run-b", 0)}) == 3


def condition(kind: str, status: str = "True", reason: str = "", message: str = "") -> dict:
    return {"type": kind, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize(
    "conditions,expected",
    [
        (None, JobState("Pending", "waiting for the training operator")),
        ([condition("Created", reason="TFJobCreated")], JobState("Created", "TFJobCreated")),
        (
            [condition("Created"), condition("Running", message="TFJob x is running.")],
            JobState("Running", "TFJob x is running."),
        ),
        (
            [
                condition("Created"),
                condition("Running", "False"),
                condition("Restarting", reason="TFJobRestarting", message="worker 1 exited 137"),
            ],
            JobState("Restarting", "TFJobRestarting: worker 1 exited 137"),
        ),
        (
            [
                condition("Created"),
                condition("Running", "False"),
                condition("Succeeded", reason="TFJobSucceeded"),
            ],
            JobState("Succeeded", "TFJobSucceeded"),
        ),
        (
            [
                condition("Created"),
                condition("Failed", reason="TFJobFailed", message="worker 0 exited with code 2"),
                condition("Running"),
            ],
            JobState("Failed", "TFJobFailed: worker 0 exited with code 2"),
        ),
    ],
    ids=["no-status", "created", "running", "restarting", "succeeded", "failed-wins"],
)
def test_the_conditions_say_where_the_job_stands(conditions, expected):
    state = job_state({"conditions": conditions} if conditions is not None else None)
    assert state == expected
    assert state.finished == (expected.phase in {"Succeeded", "Failed"})


def test_overlapping_log_reads_show_each_line_once():
    first = "2026-01-05T10:00:00.123456789Z epoch 1/3\n2026-01-05T10:00:01Z epoch 2/3\n"
    lines, cursor = new_log_lines(first, LogCursor())
    assert lines == ["epoch 1/3", "epoch 2/3"]
    again = first + "2026-01-05T10:00:02.5+00:00 epoch 3/3\n"
    lines, cursor = new_log_lines(again, cursor)
    assert lines == ["epoch 3/3"]
    assert new_log_lines(again, cursor)[0] == []


def test_the_rbac_manifest_grants_what_the_launcher_calls():
    docs = [doc for doc in yaml.safe_load_all(RBAC.read_text()) if doc]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    [role] = [doc for doc in docs if doc["kind"] == "Role"]
    [binding] = [doc for doc in docs if doc["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = {("kubeflow.org", "tfjobs", verb) for verb in ("create", "get", "delete")} | {
        ("", "pods", "list"),
        ("", "pods/log", "get"),
    }
    assert needed <= granted
