"""A registry people can read and use (issue 27): the serving tests' champion (trained on real
CIFAR-10 images and registered by the register step) carries a model card, its data as MLflow
dataset inputs and requirements any host installs; `mlflow models serve` answers a JPEG with
a label; `dvc artifacts get` fetches the model that `dvc push` stored."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from image_finetune.data.canonical import manifest_digest, read_manifest
from image_finetune.inference import load_classifier
from image_finetune.registry.client import client_for
from image_finetune.registry.versions import download_model
from image_finetune.serving.decode import decode_all
from image_finetune.serving.settings import ServeSettings
from tests.e2e.serving_support import wait_for
from tests.support import ROOT, free_port
from tests.unit.test_model_card import check_portable

DVC = str(Path(sys.executable).with_name("dvc"))


@pytest.fixture(scope="module")
def version(champion):
    registry = champion["params"].registry
    return client_for(registry).get_model_version(registry.model_name, "1")


def test_the_version_carries_its_model_card(champion, version, tmp_path):
    client = client_for(champion["params"].registry)
    assert "test accuracy" in version.description and "manifest sha256" in version.description
    names = {item.path for item in client.list_artifacts(version.run_id)}
    assert {"model_card.md", "model_card.html"} <= names
    page = Path(client.download_artifacts(version.run_id, "model_card.html", str(tmp_path)))
    text = page.read_text()
    accuracy = json.loads((champion["evaluation"] / "details.json").read_text())["accuracy"]
    assert f"{accuracy:.4g}" in text and manifest_digest(champion["data"]) in text
    assert "data:image/png;base64," in text  # the confusion matrix, inline
    markdown = Path(client.download_artifacts(version.run_id, "model_card.md", str(tmp_path)))
    assert "](evaluation/confusion_matrix.png)" in markdown.read_text()


def test_the_training_and_evaluation_data_are_dataset_inputs_of_the_run(champion, version):
    run = client_for(champion["params"].registry).get_run(version.run_id)
    manifest, digest = read_manifest(champion["data"]), manifest_digest(champion["data"])
    found = {
        tag.value: item.dataset
        for item in run.inputs.dataset_inputs
        for tag in item.tags
        if tag.key == "mlflow.data.context"
    }
    assert set(found) == {"training", "validation", "test"}
    for context, split in (("training", "train"), ("validation", "validation"), ("test", "test")):
        dataset = found[context]
        assert dataset.name.endswith(digest[:12])
        assert dataset.digest == manifest["splits"][split]["images_sha256"][:36]
        assert json.loads(dataset.source)["uri"] == champion["folder"].resolve().as_uri()
        assert json.loads(dataset.profile)["count"] == manifest["splits"][split]["count"]


def test_the_logged_requirements_install_on_a_mac_and_a_gpu_host(champion, tmp_path):
    registry = champion["params"].registry
    local = download_model(
        client_for(registry), registry.tracking_uri, registry.model_name, "1", str(tmp_path)
    )
    lines = [
        line
        for line in (Path(local) / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    check_portable(lines)


@pytest.fixture(scope="module")
def mlflow_server(champion, tmp_path_factory):
    """`mlflow models serve` over the registered version, in the local environment."""
    registry, port = champion["params"].registry, free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "MLFLOW_TRACKING_URI": registry.tracking_uri,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # MLflow starts `uvicorn` by name: the venv's, as in an activated environment.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{registry.model_name}/1",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        cwd=tmp_path_factory.mktemp("mlflow-serve"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the CLI and the uvicorn it started
        process.wait(timeout=60)


def invoke(url: str, images: list[str]) -> httpx.Response:
    return httpx.post(
        f"{url}/invocations",
        timeout=60,
        json={"dataframe_split": {"columns": ["image"], "data": [[image] for image in images]}},
    )


def test_mlflow_models_serve_answers_jpegs_as_the_server_would(champion, mlflow_server):
    files = (
        sorted((champion["folder"] / "test" / "cat").glob("*.jpg"))[:2]
        + sorted((champion["folder"] / "test" / "ship").glob("*.jpg"))[:2]
    )
    encoded = [base64.b64encode(path.read_bytes()).decode() for path in files]
    response = invoke(mlflow_server, encoded)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    names = read_manifest(champion["data"])["class_names"]
    assert len(predictions) == 4 and all(p["label"] in names for p in predictions)
    # The same probabilities as the trained model on the server's decoding of the files.
    model = load_classifier(champion["model_path"])
    images = decode_all(
        [(p.name, p.read_bytes()) for p in files],
        int(model.input_shape[1]),
        ServeSettings(),
        "resize",
    )
    expected = np.asarray(model.predict_on_batch(images))
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected, atol=1e-5)
    assert [p["label"] for p in predictions] == [names[i] for i in expected.argmax(axis=1)]


@pytest.mark.parametrize(
    ("image", "says"),
    [
        ("not base64 at all!", "not valid base64"),
        (base64.b64encode(b"plain text, no image").decode(), "row 0"),
    ],
)
def test_mlflow_models_serve_refuses_a_bad_image_clearly(mlflow_server, image, says):
    response = invoke(mlflow_server, [image])
    assert response.status_code == 400, response.text
    assert says in response.json()["message"]
    assert "Traceback" not in response.text and "stack_trace" not in response.json()


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([DVC, *args], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def test_dvc_artifacts_get_fetches_the_pushed_model(champion, tmp_path):
    """A repository with this project's `artifacts:` declaration and the model tracked as an
    output, pushed to a local remote and tagged as a version: `dvc artifacts get` fetches it
    into a fresh folder, and it loads."""
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    ((name, artifact),) = declared.items()
    assert artifact["type"] == "model" and artifact["path"] == "models/selected/model.keras"
    repo = tmp_path / "repo"
    (repo / "models" / "selected").mkdir(parents=True)
    shutil.copy(champion["model_path"], repo / artifact["path"])
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    dvc(repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"artifacts": declared}))
    dvc(repo, "add", "models")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "model")
    dvc(repo, "push")
    # A version in the DVC model registry is a Git tag (GTO's format, `gto register` makes
    # the same): `dvc artifacts get` fetches the newest version's file from the remote.
    git(
        repo,
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "tag",
        "-a",
        f"{name}@v1.0.0",
        "-m",
        f"Registering artifact {name} version v1.0.0",
    )
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    dvc(fresh, "artifacts", "get", str(repo), name, "-o", str(fresh / "model.keras"))
    fetched = load_classifier(fresh / "model.keras")
    images = np.zeros((2, *fetched.input_shape[1:]), np.uint8)
    np.testing.assert_allclose(
        fetched.predict_on_batch(images),
        load_classifier(champion["model_path"]).predict_on_batch(images),
        atol=1e-6,
    )
