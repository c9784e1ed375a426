"""The Kubernetes manifests in infra/k8s (the kustomize base, components and overlays: each
source file; tests/unit/test_kustomize.py renders the overlays): each object valid against
the Kubernetes API schemas (kubernetes-validate, offline, strict: no unknown fields), the
Prometheus Operator's and Kubeflow Trainer's objects against their CRDs (tests/fixtures/crds),
KServe's pod templates validated as pods, and the
serving Deployment hardened and started the way the image can start it."""

from __future__ import annotations

import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import typer.main
import yaml

from image_finetune.cli import app
from tests.crds import validate_custom_resource

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
# Whole objects; kustomizations and patches are not (test_kustomize renders them).
MANIFESTS = sorted(
    path
    for path in K8S.rglob("*.yaml")
    if path.name != "kustomization.yaml" and not path.name.endswith(".patch.yaml")
)
KUBERNETES = "1.30.0"  # the oldest release the manifests must work on
KSERVE = "serving.kserve.io/v1beta1"
PROMETHEUS_OPERATOR = "monitoring.coreos.com"
TRAINER = "trainer.kubeflow.org"
# Fields of a KServe predictor that are KServe's own; the rest is a pod spec.
KSERVE_PREDICTOR_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleTarget",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "annotations",
    "labels",
}


def documents() -> list[tuple[str, dict]]:
    return [
        (f"{path.relative_to(K8S)}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def by_kind(kind: str, name: str) -> dict:
    return next(
        doc for _, doc in documents() if doc["kind"] == kind and doc["metadata"]["name"] == name
    )


def predictor_as_pod(service: dict) -> dict:
    """A KServe predictor's pod template, as the Pod KServe makes of it."""
    spec = {
        k: v for k, v in service["spec"]["predictor"].items() if k not in KSERVE_PREDICTOR_FIELDS
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": spec}


def validate_object(doc: dict) -> None:
    """Validate one object: against the Kubernetes API's schema, a vendored CRD, or (KServe)
    its predictor as the Pod it becomes."""
    if doc["apiVersion"] == KSERVE:  # a custom resource: its pod template is what can break
        if "containers" in doc["spec"]["predictor"]:
            kubernetes_validate.validate(predictor_as_pod(doc), KUBERNETES, strict=True)
        return
    if doc["apiVersion"].startswith((f"{PROMETHEUS_OPERATOR}/", f"{TRAINER}/")):
        validate_custom_resource(doc)
        return
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


@pytest.mark.parametrize("label,doc", documents(), ids=[label for label, _ in documents()])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(label, doc):
    validate_object(doc)


def test_an_invalid_manifest_would_be_caught():
    broken = by_kind("Deployment", "image-finetune-serve")
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["gpu"] = 1
    broken["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFs"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def serving_pods() -> list[dict]:
    deployment = by_kind("Deployment", "image-finetune-serve")["spec"]["template"]["spec"]
    return [deployment, predictor_as_pod(by_kind("InferenceService", "image-finetune"))["spec"]]


def receiver_pod() -> dict:
    return by_kind("Deployment", "image-finetune-alert-receiver")["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    "pod", [*serving_pods(), receiver_pod()], ids=["deployment", "kserve", "alert-receiver"]
)
def test_pods_are_hardened(pod):
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory", "ephemeral-storage"} <= set(container["resources"][bound])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # the only writable place
    assert {"name": "TMPDIR", "value": "/tmp"} in container["env"]


@pytest.mark.parametrize("pod", serving_pods(), ids=["deployment", "kserve"])
def test_serving_command_is_the_cli_with_a_token_and_no_params_file(pod):
    [container] = pod["containers"]
    command = container["command"] + container["args"]
    assert command[:2] == ["image-finetune", "serve"]
    serve = typer.main.get_command(app).commands["serve"]
    options = {opt for param in serve.params for opt in param.opts}
    flags = [arg for arg in command[2:] if arg.startswith("--")]
    assert set(flags) <= options, f"unknown flags: {set(flags) - options}"
    assert "--no-auth" not in flags and "--token-file" in flags
    token_path = command[command.index("--token-file") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret = volumes[mounts[str(Path(token_path).parent)]]["secret"]
    assert by_kind("Secret", secret["secretName"])["type"] == "Opaque"
    assert not any(arg == "-p" or "--params" in arg for arg in command), shlex.join(command)


def test_probes_leave_time_to_load_the_model():
    [container] = by_kind("Deployment", "image-finetune-serve")["spec"]["template"]["spec"][
        "containers"
    ]
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"  # liveness, not readiness, at start
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_kubelet_probes_the_probe_port_the_server_is_told():
    [container] = by_kind("Deployment", "image-finetune-serve")["spec"]["template"]["spec"][
        "containers"
    ]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["IMAGE_FINETUNE_PROBE_PORT"]) == ports["probes"] != ports["http"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "probes", probe
    ingress_ports = {
        port["port"]
        for rule in by_kind("NetworkPolicy", "image-finetune-serve")["spec"]["ingress"]
        for port in rule["ports"]
    }
    assert ports["probes"] not in ingress_ports  # no client reaches it


def test_the_network_policy_selects_the_serving_pods():
    policy = by_kind("NetworkPolicy", "image-finetune-serve")
    deployment = by_kind("Deployment", "image-finetune-serve")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
