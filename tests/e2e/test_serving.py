"""Serving the champion: a real HTTP server process on loopback, bad requests, the alias
moving, batch inference, `mlflow models serve`, and the TF Serving export."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from image_finetune.config import load_params
from image_finetune.data.canonical import load_split, read_manifest
from image_finetune.inference import load_classifier
from image_finetune.registry.promotion import promote
from image_finetune.steps.evaluate import evaluate_classifier
from image_finetune.steps.final_gate import final_gate
from image_finetune.steps.register import register_classifier
from image_finetune.steps.train_rung import train_rung
from tests.conftest import ROOT, extract_subset, ingest_source


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready after {timeout} s")


def register(params, data: Path, evaluation: Path, decision: Path, model: Path, run: str):
    return register_classifier(params, data, evaluation, decision,
                               evaluation.parent / f"{run}.json", ROOT, model=model,
                               pipeline_run_id=run)


@pytest.fixture(scope="module")
def champion(cifar_tarball, no_top_weights, tmp_path_factory):
    """A model trained on real images, evaluated offline on 200 test images, champion v1."""
    work = tmp_path_factory.mktemp("serving")
    folder = extract_subset(cifar_tarball, work / "images", {"train": 30, "test": 20})
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump({
        "data": {"path": str(folder), "validation_fraction": 0.2},
        "model": {"weights": str(no_top_weights), "image_size": 64},
        "train": {"ladder": [{"name": "head", "epochs": 8, "batch_size": 32,
                              "learning_rate": 0.003}]},
        "evaluate": {"flip_tta": False, "bootstrap_samples": 200, "latency_runs": 3,
                     "gallery_size": 6},
        "gate": {"min_accuracy": 0.0, "min_macro_f1": 0.0, "min_class_recall": 0.0,
                 "max_latency_p95_ms": 10000},
        "registry": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
                     "model_name": "served"},
    }))
    params = load_params(params_file, use_env=False)
    data = work / "data"
    ingest_source(params.data, folder, data)
    model_path = Path(train_rung(params, 0, data, work / "attempt", work / "cache", ROOT)
                      .model_path)
    evaluation = work / "evaluation"
    metrics = evaluate_classifier(params, data, model_path, evaluation, "test", "offline")
    decision = work / "gate.json"
    final_gate(params, evaluation, decision)
    outcome = register(params, data, evaluation, decision, model_path, "serving-1")
    assert outcome["promoted"] and outcome["version"] == "1"
    return {"params": params, "params_file": params_file, "folder": folder, "data": data,
            "model_path": model_path, "evaluation": evaluation, "decision": decision,
            "offline_accuracy": metrics["accuracy"], "work": work}


@pytest.fixture(scope="module")
def server(champion):
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "image_finetune.cli", "serve", "-p",
         str(champion["params_file"]), "--port", str(port), "--poll-seconds", "1",
         "--max-batch", "50", "--max-image-bytes", "200000"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/readyz", process)
    yield url
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def test_server_labels_real_test_images_like_the_offline_evaluation(champion, server):
    files = sorted((champion["folder"] / "test").glob("*/*.jpg"))
    assert len(files) == 200
    classes = sorted(p.name for p in (champion["folder"] / "test").iterdir())
    correct = 0
    for start in range(0, len(files), 50):
        chunk = files[start:start + 50]
        response = httpx.post(f"{server}/predict", timeout=60, files=[
            ("files", (f.name, f.read_bytes(), "image/jpeg")) for f in chunk])
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == "1"
        for file, prediction in zip(chunk, body["predictions"], strict=True):
            assert len(prediction["top_k"]) == 3
            correct += prediction["top_k"][0]["class"] == file.parent.name
    assert classes[0] == "airplane"
    online = correct / len(files)
    assert abs(online - champion["offline_accuracy"]) <= 0.02, (online,
                                                               champion["offline_accuracy"])
    one = httpx.post(f"{server}/predict", content=files[0].read_bytes(),
                     headers={"content-type": "image/jpeg"}, timeout=30)
    assert one.status_code == 200 and len(one.json()["predictions"]) == 1


def test_any_image_size_is_resized_as_in_training(server):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((300, 200, 3), 120, np.uint8)).save(buffer, format="PNG")
    response = httpx.post(f"{server}/predict", content=buffer.getvalue(),
                          headers={"content-type": "image/png"}, timeout=30)
    assert response.status_code == 200


@pytest.mark.parametrize("kind,status,message", [
    ("not_an_image", 400, "not an image file"),
    ("empty", 400, "empty body"),
    ("too_large", 413, "over the limit"),
    ("too_many", 413, "too many images"),
    ("wrong_type", 415, "unsupported content type"),
])
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(
        champion, server, kind, status, message):
    jpeg = next((champion["folder"] / "test" / "cat").glob("*.jpg")).read_bytes()
    requests = {
        "not_an_image": {"content": b"hello, not a picture",
                         "headers": {"content-type": "image/png"}},
        "empty": {"content": b"", "headers": {"content-type": "image/jpeg"}},
        "too_large": {"content": jpeg + b"\0" * 200_001,
                      "headers": {"content-type": "image/jpeg"}},
        "too_many": {"files": [("files", (f"{i}.jpg", jpeg, "image/jpeg"))
                               for i in range(51)]},
        "wrong_type": {"content": b"{}", "headers": {"content-type": "application/json"}},
    }
    response = httpx.post(f"{server}/predict", timeout=30, **requests[kind])
    assert response.status_code == status
    assert message in response.json()["detail"]
    assert httpx.get(f"{server}/healthz").status_code == 200
    ok = httpx.post(f"{server}/predict", content=jpeg, headers={"content-type": "image/jpeg"})
    assert ok.status_code == 200


def test_metadata_and_prometheus_metrics(server):
    metadata = httpx.get(f"{server}/metadata").json()
    assert metadata["input_shape"] == [32, 32, 3] and len(metadata["class_names"]) == 10
    metrics = httpx.get(f"{server}/metrics").text
    assert "predict_requests_total" in metrics and "predict_latency_seconds_bucket" in metrics


def test_moving_the_alias_swaps_the_served_version(champion, server):
    params = champion["params"]
    outcome = register(params, champion["data"], champion["evaluation"], champion["decision"],
                       champion["model_path"], "serving-2")
    assert outcome["version"] == "2" and not outcome["promoted"]
    promote(params.registry, "2", "test: move the alias")
    jpeg = next((champion["folder"] / "test" / "dog").glob("*.jpg")).read_bytes()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = httpx.post(f"{server}/predict", content=jpeg,
                              headers={"content-type": "image/jpeg"}, timeout=30)
        assert response.status_code == 200  # no gap while the new version loads
        if response.json()["model_version"] == "2":
            break
        time.sleep(0.5)
    assert response.json()["model_version"] == "2"
    assert httpx.get(f"{server}/readyz").json()["model_version"] == "2"


def test_batch_inference_writes_a_csv_and_names_unreadable_files(champion, tmp_path):
    import shutil

    folder = tmp_path / "images"
    shutil.copytree(champion["folder"] / "test" / "ship", folder / "ship")
    (folder / "ship" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "predictions.csv"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", "image_finetune.cli", "predict-batch",
                             str(folder), "--out", str(out), "-p",
                             str(champion["params_file"])], env=env, capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    import csv

    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 21
    broken = [r for r in rows if r["file"].endswith("broken.jpg")]
    assert broken and "not an image file" in broken[0]["error"]
    assert sum(r["error"] == "" for r in rows) == 20
    classes = set(read_manifest(champion["data"])["class_names"])
    assert {r["predicted"] for r in rows if not r["error"]} <= classes  # names, not indices


def test_mlflow_models_serve_answers_with_the_same_predictions(champion):
    port = free_port()
    params = champion["params"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": params.registry.tracking_uri,
           "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": f"{Path(sys.executable).parent}:"
           f"{os.environ['PATH']}"}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
         f"models:/{params.registry.model_name}@champion", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/ping", process)
        images = np.asarray(load_split(champion["data"], "test").images[:8])
        response = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                              json={"inputs": images.tolist()})
        assert response.status_code == 200, response.text
        served = np.asarray(response.json()["predictions"])
        expected = np.asarray(load_classifier(champion["model_path"]).predict_on_batch(images))
        np.testing.assert_allclose(served, expected, atol=1e-5)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_tf_serving_export_takes_uint8_images(champion, tmp_path):
    import tensorflow as tf

    from image_finetune.steps.export import export_savedmodel

    out = export_savedmodel(champion["model_path"], tmp_path / "savedmodel" / "1")
    loaded = tf.saved_model.load(str(out))
    signature = loaded.signatures["serving_default"]
    spec = next(iter(signature.structured_input_signature[1].values()))
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 32, 32, 3]
    images = np.asarray(load_split(champion["data"], "test").images[:4])
    served = next(iter(signature(tf.constant(images)).values())).numpy()
    expected = np.asarray(load_classifier(champion["model_path"]).predict_on_batch(images))
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert json.loads(json.dumps(spec.shape.as_list())) == [None, 32, 32, 3]
