"""Rendering infra/k8s with ``kubectl kustomize`` (kubectl is on the machines that run the
tests): an overlay as it is, or an overlay with components added, the way a user adds them to
its ``components:``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[1] / "infra" / "k8s"
OVERLAYS = sorted(
    path.name for path in (K8S / "overlays").iterdir() if (path / "kustomization.yaml").is_file()
)


class Loader(yaml.SafeLoader):
    """YAML as kustomize writes it: a lone ``=`` (an Alertmanager matcher's matchType) is a
    string to Go's YAML, but YAML 1.1's "value" key to PyYAML."""


Loader.add_constructor("tag:yaml.org,2002:value", Loader.construct_yaml_str)


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        raise RuntimeError(
            "kubectl is not installed: the kustomize tests render with `kubectl kustomize`"
        )
    return found


def render(folder: Path) -> list[dict]:
    """The objects ``kubectl kustomize folder`` renders."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode:
        raise AssertionError(f"kubectl kustomize {folder} failed: {done.stderr.strip()}")
    return [doc for doc in yaml.load_all(done.stdout, Loader=Loader) if doc]


def render_with(overlay: str, components: list[str], folder: Path) -> list[dict]:
    """The overlay with ``components`` (names under infra/k8s/components) added, from a
    kustomization in ``folder`` (kustomize takes only relative paths)."""

    def relative(path: Path) -> str:
        return os.path.relpath(path, folder)

    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [relative(K8S / "overlays" / overlay)],
        "components": [relative(K8S / "components" / name) for name in components],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return render(folder)


def one(objects: list[dict], kind: str, name: str) -> dict:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found
