"""Serving the champion: a real HTTP server process on loopback answering concurrent clients
as the offline evaluation does, the alias moving, batch inference, `mlflow models serve`, and
the TF Serving export. Hostile requests: test_serving_hostile.py; the Open Inference
Protocol: test_serving_oip.py; starting without the registry: test_serving_startup.py."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from image_finetune.data.canonical import load_split, read_manifest
from image_finetune.data.images import decode_image
from image_finetune.inference import load_classifier
from image_finetune.registry.promotion import promote, rollback
from image_finetune.steps.evaluate import evaluate_classifier
from image_finetune.steps.final_gate import final_gate
from tests.e2e.serving_support import register, relabelled_copy

CLIENTS = 16


def offline_probabilities(champion, files: list[Path]) -> np.ndarray:
    """The Keras model's probabilities for these files, decoded as the server decodes."""
    images = np.stack([decode_image(f.read_bytes(), f.name, 32, "resize") for f in files])
    return np.asarray(load_classifier(champion["model_path"]).predict_on_batch(images))


def test_server_labels_real_test_images_like_the_offline_evaluation(champion, server):
    url = server.url
    files = sorted((champion["folder"] / "test").glob("*/*.jpg"))
    assert len(files) == 200
    classes = sorted(p.name for p in (champion["folder"] / "test").iterdir())
    correct = 0
    for start in range(0, len(files), 50):
        chunk = files[start : start + 50]
        response = httpx.post(
            f"{url}/predict",
            timeout=60,
            files=[("files", (f.name, f.read_bytes(), "image/jpeg")) for f in chunk],
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == "1"
        for file, prediction in zip(chunk, body["predictions"], strict=True):
            assert len(prediction["top_k"]) == 3
            correct += prediction["top_k"][0]["class"] == file.parent.name
    assert classes[0] == "airplane"
    # The server decodes the files as ingest did and runs the same model: the same answers.
    assert correct / len(files) == pytest.approx(champion["offline_accuracy"], abs=1e-9)
    one = httpx.post(
        f"{url}/predict",
        content=files[0].read_bytes(),
        headers={"content-type": "image/jpeg"},
        timeout=30,
    )
    assert one.status_code == 200 and len(one.json()["predictions"]) == 1


def test_any_image_size_is_resized_as_in_training(server):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((300, 200, 3), 120, np.uint8)).save(buffer, format="PNG")
    response = httpx.post(
        f"{server.url}/predict",
        content=buffer.getvalue(),
        headers={"content-type": "image/png"},
        timeout=30,
    )
    assert response.status_code == 200


async def classify_concurrently(url: str, files: list[Path]) -> dict[Path, dict]:
    """Each file posted alone, by CLIENTS clients at once, each on its own connection."""
    answers: dict[Path, dict] = {}

    async def client(mine: list[Path]) -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            for file in mine:
                response = await http.post(
                    f"{url}/predict",
                    content=file.read_bytes(),
                    headers={"content-type": "image/jpeg"},
                )
                assert response.status_code == 200, response.text
                answers[file] = response.json()["predictions"][0]["top_k"][0]

    await asyncio.gather(*(client(files[i::CLIENTS]) for i in range(CLIENTS)))
    return answers


def batch_size_totals(url: str) -> tuple[float, float]:
    """(images, model calls) so far, from the Prometheus metrics."""
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    value = {
        line.split()[0]: float(line.split()[1])
        for line in lines
        if line.startswith("inference_batch_size_")
    }
    return value["inference_batch_size_sum"], value["inference_batch_size_count"]


def test_concurrent_clients_get_the_offline_labels_in_shared_batches(champion, server):
    files = sorted((champion["folder"] / "test").glob("*/*.jpg"))
    names = read_manifest(champion["data"])["class_names"]
    expected = offline_probabilities(champion, files)
    images_before, calls_before = batch_size_totals(server.url)
    answers = asyncio.run(classify_concurrently(server.url, files))
    for file, probabilities in zip(files, expected, strict=True):
        assert answers[file]["class"] == names[int(np.argmax(probabilities))], file
        assert abs(answers[file]["probability"] - probabilities.max()) < 1e-4, file
    images, calls = batch_size_totals(server.url)
    assert images - images_before == len(files)
    assert calls - calls_before < len(files), "concurrent requests never shared a model call"


def test_metadata_and_prometheus_metrics(server):
    metadata = httpx.get(f"{server.url}/metadata").json()
    assert metadata["input_shape"] == [32, 32, 3] and len(metadata["class_names"]) == 10
    # v1 was registered without an engine folder: it is served on Keras, in fp32.
    assert (metadata["engine"], metadata["precision"]) == ("tensorflow", "fp32")
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in (
        'http_requests_total{method="POST",route="/predict",status="200"}',
        'http_request_duration_seconds_bucket{le="0.005",method="GET",route="/metadata"}',
        "inference_batch_size_bucket",
        "inference_queue_depth_bucket",
        "inference_model_seconds_bucket",
        "process_resident_memory_bytes",
        "served_model_version",
    ):
        assert name in metrics, name


def served_top(url: str, files: list[Path]) -> tuple[str, list[str], np.ndarray]:
    """(version, top class, its probability) for ``files``, in one request."""
    response = httpx.post(
        f"{url}/predict",
        timeout=60,
        files=[("files", (f.name, f.read_bytes(), "image/jpeg")) for f in files],
    )
    assert response.status_code == 200, response.text  # no gap while a version loads
    body = response.json()
    tops = [p["top_k"][0] for p in body["predictions"]]
    return (
        body["model_version"],
        [t["class"] for t in tops],
        np.array([t["probability"] for t in tops]),
    )


def test_moving_the_alias_swaps_the_served_model(champion, server):
    params, work = champion["params"], champion["work"]
    v2 = relabelled_copy(champion["model_path"], work / "relabelled.keras")
    evaluation = work / "evaluation-v2"
    evaluate_classifier(params, champion["data"], v2, evaluation, "test", "relabelled")
    decision = work / "gate-v2.json"
    final_gate(params, evaluation, decision)
    outcome = register(params, champion["data"], evaluation, decision, v2, "serving-2")
    assert not outcome["promoted"]  # worse than the champion: registered, not promoted
    new = outcome["version"]  # "2", unless another test registered into this store first
    files = sorted((champion["folder"] / "test").glob("*/*.jpg"))[::20]
    names = read_manifest(champion["data"])["class_names"]
    expected = {
        "1": offline_probabilities(champion, files),
        new: offline_probabilities({**champion, "model_path": v2}, files),
    }
    assert served_top(server.url, files)[0] == "1"
    promote(params.registry, new, "test: move the alias")
    try:
        served = wait_until_served(server.url, files, new)
        assert httpx.get(f"{server.url}/readyz").json()["model_version"] == new
        assert served[1] == [names[i] for i in expected[new].argmax(axis=1)]
        np.testing.assert_allclose(served[2], expected[new].max(axis=1), atol=1e-4)
        # Every one of these images gets another label from v1: the answers above are v2's.
        assert (expected["1"].argmax(axis=1) != expected[new].argmax(axis=1)).all()
    finally:  # the other serving tests expect v1
        rollback(params.registry, "test: back to v1")
        wait_until_served(server.url, files, "1")


def wait_until_served(url: str, files: list[Path], version: str):
    """What the server answers once it serves ``version`` (answering all the while)."""
    deadline = time.monotonic() + 60
    while (served := served_top(url, files))[0] != version:
        assert time.monotonic() < deadline, f"the server never picked up v{version}"
        time.sleep(0.5)
    return served


def test_batch_inference_writes_a_csv_and_names_unreadable_files(champion, tmp_path):
    import shutil

    folder = tmp_path / "images"
    shutil.copytree(champion["folder"] / "test" / "ship", folder / "ship")
    (folder / "ship" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "predictions.csv"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "image_finetune.cli",
            "predict-batch",
            str(folder),
            "--out",
            str(out),
            "-p",
            str(champion["params_file"]),
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import csv

    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 21
    broken = [r for r in rows if r["file"].endswith("broken.jpg")]
    assert broken and "not an image file" in broken[0]["error"]
    assert sum(r["error"] == "" for r in rows) == 20
    classes = set(read_manifest(champion["data"])["class_names"])
    assert {r["predicted"] for r in rows if not r["error"]} <= classes  # names, not indices


def test_tf_serving_export_takes_uint8_images(champion, tmp_path):
    import tensorflow as tf

    from image_finetune.steps.export import export_savedmodel

    out = export_savedmodel(champion["model_path"], tmp_path / "savedmodel" / "1")
    loaded = tf.saved_model.load(str(out))
    signature = loaded.signatures["serving_default"]
    spec = next(iter(signature.structured_input_signature[1].values()))
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, 32, 32, 3]
    images = np.asarray(load_split(champion["data"], "test").images[:4])
    served = signature(tf.constant(images))["probabilities"].numpy()
    expected = np.asarray(load_classifier(champion["model_path"]).predict_on_batch(images))
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert json.loads(json.dumps(spec.shape.as_list())) == [None, 32, 32, 3]
