"""The shadow and canary components (infra/k8s/components/shadow, canary): each patch, merged
into base/serving.yaml's Deployment the way a strategic merge does it (containers, env,
volumes and mounts by their keys), is a valid Deployment whose variables the server reads and
accepts, with its feedback store on the claim components/feedback makes; KServe's canary (the
kserve overlay with components/kserve-canary, rendered by kubectl kustomize) changes only
the split, the Serverless mode it needs and the alias of the new revision."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import typer.main
import yaml

from image_finetune.cli import app
from image_finetune.monitoring.feedback_store import store_path
from image_finetune.serving.settings import OperateSettings, operate_from_env
from tests.kustomize import one, render, render_with

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
COMPONENTS = K8S / "components"
PATCHES = {
    "serving-shadow.patch.yaml": COMPONENTS / "shadow",
    "serving-canary.patch.yaml": COMPONENTS / "canary",
}
KUBERNETES = "1.30.0"
# What strategic merge keys each list by (the Kubernetes API's patchMergeKey).
MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name", "volumeMounts": "mountPath"}


def merge(base, patch, field: str = ""):
    """``patch`` merged into ``base`` as a strategic-merge patch does it: mappings key by key
    (null deletes), the lists above item by item on their merge key, other lists replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = merge(base.get(key), value, key) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        merged = {item[key]: item for item in base}
        for item in patch:
            merged[item[key]] = merge(merged.get(item[key], {}), item, field)
        return list(merged.values())
    return patch


def serving_deployment() -> dict:
    return next(
        doc
        for doc in yaml.safe_load_all((K8S / "base" / "serving.yaml").read_text())
        if doc and doc["kind"] == "Deployment"
    )


def patched(name: str) -> dict:
    patch = yaml.safe_load((PATCHES[name] / name).read_text())
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", "image-finetune-serve")
    return merge(serving_deployment(), patch)


def serve_variables() -> set[str]:
    """Every IMAGE_FINETUNE_ variable ``image-finetune serve`` reads: its flags' and the
    operate settings'."""
    serve = typer.main.get_command(app).commands["serve"]
    flags = {
        name
        for param in serve.params
        for name in (param.envvar if isinstance(param.envvar, list) else [param.envvar])
        if name
    }
    return flags | {f"IMAGE_FINETUNE_{name.upper()}" for name in OperateSettings.model_fields}


def server_env(deployment: dict) -> dict[str, str]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


@pytest.mark.parametrize("mode", ["shadow", "canary"])
def test_the_patched_deployment_is_valid_and_runs_the_mode(mode):
    deployment = patched(f"serving-{mode}.patch.yaml")
    kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    env = server_env(deployment)
    assert {name for name in env if name.startswith("IMAGE_FINETUNE_")} <= serve_variables()
    settings = operate_from_env(env)  # the server's own reading: names and values
    assert settings.rollout == mode and settings.challenger_alias == "challenger"
    assert env["IMAGE_FINETUNE_ALIAS"] == "champion"  # what serving.yaml set stays
    if mode == "canary":
        assert 0 < settings.canary_percent < 100


@pytest.mark.parametrize("mode", ["shadow", "canary"])
def test_feedback_and_windows_land_on_the_claim_one_pod_writes(mode):
    deployment = patched(f"serving-{mode}.patch.yaml")
    settings = operate_from_env(server_env(deployment))
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    feedback = COMPONENTS / "feedback" / "feedback.yaml"
    claim = next(doc for doc in yaml.safe_load_all(feedback.read_text()) if doc)
    for path in (store_path(settings.feedback_uri), settings.monitor_record_dir):
        [mount] = [m for m in mounts if path.is_relative_to(m)]
        assert (
            volumes[mounts[mount]]["persistentVolumeClaim"]["claimName"]
            == claim["metadata"]["name"]
        )
    kubernetes_validate.validate(claim, KUBERNETES, strict=True)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "/tmp" in mounts  # serving.yaml's volumes stay


def test_a_patch_naming_a_setting_the_server_lacks_would_be_caught():
    deployment = patched("serving-canary.patch.yaml")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    container["env"].append({"name": "IMAGE_FINETUNE_CANARY_PERCENTAGE", "value": "10"})
    assert not {item["name"] for item in container["env"]} <= serve_variables() | {"HOME", "TMPDIR"}
    with pytest.raises(ValueError, match="canary_percent"):
        operate_from_env({"IMAGE_FINETUNE_CANARY_PERCENT": "150"})


def test_kserves_canary_changes_only_the_split_the_mode_and_the_alias(tmp_path):
    base = one(render(K8S / "overlays" / "kserve"), "InferenceService", "image-finetune")
    canary = one(
        render_with("kserve", ["kserve-canary"], tmp_path), "InferenceService", "image-finetune"
    )
    predictor = canary["spec"]["predictor"]
    assert 0 < predictor.pop("canaryTrafficPercent") < 100
    annotations = canary["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Serverless"
    [container] = predictor["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["IMAGE_FINETUNE_ALIAS"]["value"] == "challenger"
    env["IMAGE_FINETUNE_ALIAS"]["value"] = "champion"
    assert canary == base
