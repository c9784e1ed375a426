"""The serving install alone: a fresh virtual environment (uv venv) with the `serve` extra's
locked packages (uv export --extra serve) and the project, and nothing else. TensorFlow,
Keras and Great Expectations are absent; `image-finetune serve` from that environment serves
a real model registered with its engine folder, through an MLflow tracking server, and
labels a real CIFAR-10 JPEG as the Keras model does."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from image_finetune.data.images import decode_image
from image_finetune.inference import load_classifier
from tests.e2e.serving_support import Server
from tests.engine_registry import engine_registry
from tests.support import ROOT, missing_part

UNWANTED = ("tensorflow", "keras", "great_expectations", "tf2onnx", "nncf")
MODEL_NAME = "installed"


def uv() -> Path:
    found = Path(sys.executable).parent / "uv"
    if not found.exists():
        missing_part(f"uv not found beside {sys.executable} (infra/setup.sh installs it)")
    return found


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory) -> Path:
    """A fresh venv with the serve extra's locked packages and the project, no more."""
    work = tmp_path_factory.mktemp("serve-install")
    requirements, source = work / "requirements.txt", project_copy(work / "source")
    start = time.perf_counter()
    for command in (
        [
            uv(),
            "export",
            "--frozen",
            "--no-dev",
            "--extra",
            "serve",
            "--no-emit-project",
            "--format",
            "requirements.txt",
            "-o",
            requirements,
        ],
        [uv(), "venv", "-q", "--python", sys.executable, work / "venv"],
        [
            uv(),
            "pip",
            "install",
            "-q",
            "--python",
            work / "venv" / "bin" / "python",
            "--require-hashes",
            "-r",
            requirements,
        ],
        [
            uv(),
            "pip",
            "install",
            "-q",
            "--python",
            work / "venv" / "bin" / "python",
            "--no-deps",
            source,
        ],
    ):
        done = subprocess.run(
            [str(part) for part in command], cwd=ROOT, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{command[1:3]}: {done.stderr[-3000:]}"
    print(f"serve install: {time.perf_counter() - start:.1f} s")
    return work / "venv"


def project_copy(out: Path) -> Path:
    """What a wheel is built from (its build leaves build/ and egg-info in its source)."""
    import shutil

    for name in ("pyproject.toml", "README.md"):
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, out / name)
    for name in ("src", "components", "pipelines"):
        shutil.copytree(
            ROOT / name,
            out / name,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
    return out


@pytest.fixture(scope="module")
def registry(small_model, tmp_path_factory):
    """The session's small model registered with its engine folder, behind a real MLflow
    tracking server (mlflow-skinny reads a registry only through one)."""
    work = tmp_path_factory.mktemp("install-registry")
    with engine_registry(small_model["model"], small_model["data"], work, MODEL_NAME) as found:
        yield {**found, "work": work}


def test_the_serve_install_has_no_tensorflow_keras_or_great_expectations(serve_venv):
    probe = (
        "import importlib.util, json; print(json.dumps({n: importlib.util.find_spec(n) "
        f"is not None for n in {UNWANTED + ('openvino', 'mlflow', 'fastapi')!r}}}))"
    )
    done = subprocess.run(
        [str(serve_venv / "bin" / "python"), "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = json.loads(done.stdout)
    assert [name for name in UNWANTED if found[name]] == []
    assert found["openvino"] and found["mlflow"] and found["fastapi"]


def test_the_serve_install_serves_a_registered_model_on_the_engine(
    serve_venv, registry, small_model, small_folder
):
    jpeg = sorted((small_folder / "test").glob("*/*.jpg"))[0]
    expected = load_classifier(small_model["model"]).predict_on_batch(
        decode_image(jpeg.read_bytes(), jpeg.name, 32, "resize")[None]
    )
    server = Server(
        {"MLFLOW_TRACKING_URI": registry["uri"], "IMAGE_FINETUNE_MODEL_NAME": MODEL_NAME},
        [],
        registry["work"],
        command=[str(serve_venv / "bin" / "image-finetune"), "serve"],
    )
    try:
        server.wait_ready()
        print(f"serve install: ready in {server.ready_seconds:.1f} s")
        metadata = httpx.get(f"{server.url}/metadata").json()
        assert (metadata["engine"], metadata["precision"]) == ("openvino", "fp32")
        answer = httpx.post(
            f"{server.url}/predict",
            content=jpeg.read_bytes(),
            timeout=60,
            headers={"content-type": "image/jpeg"},
        )
        assert answer.status_code == 200, answer.text
        label = answer.json()["predictions"][0]["top_k"][0]["class"]
        assert label == registry["names"][int(np.argmax(expected))]
    finally:
        server.stop()
