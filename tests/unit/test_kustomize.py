"""The kustomize tree in infra/k8s rendered by ``kubectl kustomize``: every overlay, and the
overlays with each rollout component, render objects that are valid (kubernetes-validate,
strict, and the vendored CRDs for custom resources), all in the overlay's namespace and on the
images it names; the model name, the namespace, the image and the resources are kustomize
fields that reach every manifest that carries them."""

from __future__ import annotations

import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.kustomize import K8S, OVERLAYS, one, render, render_with
from tests.unit.test_k8s_manifests import KUBERNETES, validate_object

IMAGE = "ghcr.io/image-finetune/image-finetune"
CLUSTER_SCOPED = {"Namespace", "ClusterTrainingRuntime"}
# Each rollout component with an overlay it is made for.
WITH_COMPONENTS = [
    ("cluster-cpu", "shadow"),
    ("cluster-cpu", "canary"),
    ("cluster-gpu", "canary"),
    ("local", "shadow"),
    ("kserve", "kserve-canary"),
    ("kserve", "kserve-standard"),
]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


def images(objects: list[dict]) -> dict[str, str]:
    """Each container's image, by object and container."""
    found = {}
    for obj in objects:
        spec = obj.get("spec", {})
        pod = spec.get("template", {}).get("spec") or spec.get("predictor") or {}
        for container in pod.get("containers", []):
            found[f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}"] = container[
                "image"
            ]
    return found


def serving_container(objects: list[dict]) -> dict:
    [deployment] = [
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "image-finetune-serve"
    ]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container["env"]}


def test_the_overlays_are_the_four_documented():
    assert OVERLAYS == ["cluster-cpu", "cluster-gpu", "kserve", "local"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_valid_objects_in_its_namespace(overlay, rendered):
    objects = rendered[overlay]
    namespaces = {
        o["metadata"].get("namespace") for o in objects if o["kind"] not in CLUSTER_SCOPED
    }
    assert len(namespaces) == 1 and None not in namespaces, namespaces
    for obj in objects:
        validate_object(obj)
        annotations = obj["metadata"].get("annotations") or {}
        assert "config.kubernetes.io/local-config" not in annotations  # settings stay local
    for where, image in images(objects).items():
        assert image.startswith(f"{IMAGE}:0.1.0-"), (where, image)


@pytest.mark.parametrize("overlay,component", WITH_COMPONENTS)
def test_each_rollout_component_renders_valid_objects(overlay, component, tmp_path):
    for obj in render_with(overlay, [component], tmp_path):
        validate_object(obj)


def test_local_runs_one_small_replica_of_the_loaded_image(rendered):
    objects = rendered["local"]
    assert one(objects, "Deployment", "image-finetune-serve")["spec"]["replicas"] == 1
    container = serving_container(objects)
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["resources"]["limits"]["cpu"] == "1"
    assert {o["kind"] for o in objects} >= {"Namespace", "Deployment", "Service", "Secret"}
    assert not [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com")]


@pytest.mark.parametrize("overlay", ["cluster-cpu", "kserve", "local"])
def test_the_server_runs_the_slim_serving_image_and_the_rest_the_cpu_image(overlay, rendered):
    for where, image in images(rendered[overlay]).items():
        serves = where.startswith(
            ("Deployment/image-finetune-serve/", "InferenceService/image-finetune/")
        )
        assert image == f"{IMAGE}:0.1.0-{'serve' if serves else 'cpu'}", (where, image)


def test_cluster_cpu_adds_monitoring_alerts_and_the_pipelines_volume(rendered):
    kinds = {o["kind"] for o in rendered["cluster-cpu"]}
    assert kinds >= {
        "ServiceMonitor",
        "PrometheusRule",
        "AlertmanagerConfig",
        "PersistentVolumeClaim",
        "Role",
        "RoleBinding",
    }
    assert "nvidia.com/gpu" not in serving_container(rendered["cluster-cpu"])["resources"]["limits"]


def test_cluster_gpu_serves_on_a_gpu_node_and_leaves_the_receiver_on_cpu(rendered):
    objects = rendered["cluster-gpu"]
    container = serving_container(objects)
    assert container["image"] == f"{IMAGE}:0.1.0-gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    pod = one(objects, "Deployment", "image-finetune-serve")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"]
    receiver = one(objects, "Deployment", "image-finetune-alert-receiver")
    [receiver_container] = receiver["spec"]["template"]["spec"]["containers"]
    assert receiver_container["image"] == f"{IMAGE}:0.1.0-cpu"


def test_kserve_replaces_the_deployment_and_keeps_what_the_predictor_needs(rendered):
    objects = rendered["kserve"]
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert not {kind for kind, name in names if name == "image-finetune-serve"} & {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    assert {
        ("Secret", "image-finetune-serve-token"),
        ("ServiceAccount", "image-finetune-serve"),
    } <= names
    service = one(objects, "InferenceService", "image-finetune")
    # scaleMetric concurrency is Knative's: the overlay asks for Serverless mode.
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == ("Serverless")
    assert service["spec"]["predictor"]["scaleMetric"] == "concurrency"


def test_kserve_standard_mode_scales_on_cpu_with_an_hpa(tmp_path):
    service = one(
        render_with("kserve", ["kserve-standard"], tmp_path), "InferenceService", "image-finetune"
    )
    annotations = service["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    predictor = service["spec"]["predictor"]
    assert predictor["scaleMetric"] in ("cpu", "memory")  # what an HPA scales on
    assert "canaryTrafficPercent" not in predictor  # Serverless only


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of infra/k8s to change an overlay's fields in."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    return copy


def set_field(path: Path, change) -> None:
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_the_model_name_in_an_overlays_settings_reaches_the_server(tree):
    for overlay in ("local", "kserve"):
        set_field(
            tree / "overlays" / overlay / "settings.yaml",
            lambda doc: doc["data"].update({"model-name": "team-classifier"}),
        )
    assert (
        env(serving_container(render(tree / "overlays" / "local")))["IMAGE_FINETUNE_MODEL_NAME"]
        == "team-classifier"
    )
    service = one(render(tree / "overlays" / "kserve"), "InferenceService", "image-finetune")
    [container] = service["spec"]["predictor"]["containers"]
    assert env(container)["IMAGE_FINETUNE_MODEL_NAME"] == "team-classifier"


def test_namespace_image_and_resources_are_kustomize_fields(tree):
    overlay = tree / "overlays" / "cluster-cpu"

    def change(doc):
        doc["namespace"] = "vision-prod"
        doc["images"] = [
            {"name": IMAGE, "newName": "registry.example.com/ml/image", "newTag": "2.0.0-cpu"},
            {
                "name": "image-finetune-serve",
                "newName": "registry.example.com/ml/image",
                "newTag": "2.0.0-serve",
            },
        ]

    set_field(overlay / "kustomization.yaml", change)
    set_field(
        overlay / "resources.patch.yaml",
        lambda doc: doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(
            cpu="6"
        ),
    )
    objects = render(overlay)
    assert {o["metadata"]["namespace"] for o in objects} == {"vision-prod"}
    assert set(images(objects).values()) == {
        "registry.example.com/ml/image:2.0.0-cpu",
        "registry.example.com/ml/image:2.0.0-serve",
    }
    assert serving_container(objects)["image"] == "registry.example.com/ml/image:2.0.0-serve"
    assert serving_container(objects)["resources"]["limits"]["cpu"] == "6"
    config = one(objects, "AlertmanagerConfig", "image-finetune-retrain")
    [webhook] = config["spec"]["receivers"][0]["webhookConfigs"]
    # Alertmanager reaches the receiver in the namespace it now runs in.
    assert webhook["url"] == (
        "http://image-finetune-alert-receiver.vision-prod.svc.cluster.local/alerts"
    )


def test_a_patch_with_a_misspelt_field_is_caught(tree):
    set_field(
        tree / "overlays" / "local" / "resources.patch.yaml",
        lambda doc: doc["spec"]["template"]["spec"]["containers"][0].update(
            imagePullPolicies="Always"
        ),
    )
    container_owner = one(render(tree / "overlays" / "local"), "Deployment", "image-finetune-serve")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(container_owner, KUBERNETES, strict=True)
