"""Serving on the fast engine: the champion registered with its engine folder (ONNX and
OpenVINO IR) and its reference profile, served by a real process on engine auto (OpenVINO):
its answers equal Keras's, /metadata and the OIP metadata name the engine, drift monitoring
projects the engine's embedding as Keras does, the serving process never imports
TensorFlow, Keras or Great Expectations, predict-batch runs on the engine, and moving the
alias loads the new version's own engine folder (here its int8 variant)."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys

import httpx
import numpy as np
import pytest

from image_finetune.data.canonical import load_split, read_manifest
from image_finetune.data.images import decode_image
from image_finetune.engines import open_predictor
from image_finetune.inference import load_classifier
from image_finetune.monitoring.profile import ReferenceProfile
from image_finetune.monitoring.summaries import embedding_model, projecting_model
from image_finetune.registry.promotion import promote
from image_finetune.steps.evaluate import evaluate_classifier
from image_finetune.steps.final_gate import final_gate
from image_finetune.steps.predict_batch import predict_batch
from tests.e2e.serving_support import (
    engine_folder,
    log_engine,
    register,
    register_with_profile,
    relabelled_copy,
    serve,
)
from tests.support import wait_until

# One server's life: answers, monitoring, then the alias moving to an int8 version.
pytestmark = pytest.mark.ordered
WINDOW = 20
# OpenVINO in fp32 against Keras on the same images: measured at most ~1e-6 apart.
TOLERANCE = 1e-4
UNWANTED = ("tensorflow", "keras", "great_expectations")


@pytest.fixture(scope="module")
def on_engine(champion, tmp_path_factory):
    """The champion with its profile and its engine folder in a registry of this module's
    own, served on engine auto with 20-image monitoring windows recorded."""
    work = tmp_path_factory.mktemp("engine")
    params, profile, outcome = register_with_profile(champion, work, "engine-1")
    assert outcome["promoted"] and outcome["version"] == "1"
    names = read_manifest(champion["data"])["class_names"]
    folder = engine_folder(champion["model_path"], work / "engine-v1", names)
    log_engine(params.registry.tracking_uri, params.registry.model_name, "1", folder)
    records = work / "windows"
    server = serve(
        {
            "MLFLOW_TRACKING_URI": params.registry.tracking_uri,
            "IMAGE_FINETUNE_MODEL_NAME": params.registry.model_name,
            "IMAGE_FINETUNE_POLL_SECONDS": "1",
            "IMAGE_FINETUNE_MONITOR_WINDOW": str(WINDOW),
            "IMAGE_FINETUNE_MONITOR_CPU_SHARE": "1",
            "IMAGE_FINETUNE_MONITOR_RECORD_DIR": str(records),
        },
        [],
        work,
    )
    yield {
        "server": server,
        "params": params,
        "work": work,
        "names": names,
        "profile": profile,
        "records": records,
        "files": sorted((champion["folder"] / "test").glob("*/*.jpg")),
    }
    server.stop()


@pytest.fixture(scope="module")
def keras_model(champion):
    return load_classifier(champion["model_path"])


def pixels(files) -> np.ndarray:
    return np.stack([decode_image(f.read_bytes(), f.name, 32, "resize") for f in files])


def test_metadata_names_the_engine_and_precision(on_engine):
    url, name = on_engine["server"].url, on_engine["params"].registry.model_name
    metadata = httpx.get(f"{url}/metadata").json()
    assert (metadata["engine"], metadata["precision"]) == ("openvino", "fp32")
    oip = httpx.get(f"{url}/v2/models/{name}").json()
    assert oip["platform"] == "openvino"
    assert oip["parameters"] == {"engine": "openvino", "precision": "fp32"}


def test_monitoring_projects_the_engines_embedding_as_keras_does(on_engine, keras_model):
    url, files = on_engine["server"].url, on_engine["files"][:WINDOW]
    response = httpx.post(
        f"{url}/predict",
        timeout=60,
        files=[("files", (f.name, f.read_bytes(), "image/jpeg")) for f in files],
    )
    assert response.status_code == 200, response.text
    wait_until(
        lambda: httpx.get(f"{url}/monitoring").json()["windows_tested"] >= 1,
        timeout=120,
        what="the engine's window was never tested",
    )
    [recorded] = on_engine["records"].glob("*.npz")
    window = np.load(recorded)
    profile = ReferenceProfile.load(on_engine["profile"])
    summaries = projecting_model(embedding_model(keras_model), profile.mean, profile.components)
    probabilities, projected = summaries.predict_on_batch(pixels(files))
    np.testing.assert_allclose(window["probabilities"], probabilities, atol=TOLERANCE)
    np.testing.assert_allclose(window["projected"], projected, atol=1e-3)


def test_the_engines_answers_are_the_keras_models(on_engine, keras_model, champion):
    url, name = on_engine["server"].url, on_engine["params"].registry.model_name
    images = np.asarray(load_split(champion["data"], "test").images[:40])
    response = httpx.post(
        f"{url}/v2/models/{name}/infer",
        timeout=60,
        json={
            "inputs": [
                {
                    "name": "images",
                    "datatype": "UINT8",
                    "shape": list(images.shape),
                    "data": images.ravel().tolist(),
                }
            ]
        },
    )
    assert response.status_code == 200, response.text
    served = {o["name"]: o for o in response.json()["outputs"]}["probabilities"]
    probabilities = np.asarray(served["data"], np.float32).reshape(served["shape"])
    expected = np.asarray(keras_model.predict_on_batch(images))
    np.testing.assert_allclose(probabilities, expected, atol=TOLERANCE)
    assert (probabilities.argmax(axis=1) == expected.argmax(axis=1)).all()


NO_TENSORFLOW = """
import json, sys, time
import image_finetune.cli  # the command's own import chain first
from fastapi.testclient import TestClient
from image_finetune.serving.app import create_app
from image_finetune.serving.settings import ServeSettings

settings = ServeSettings(tracking_uri=sys.argv[1], model_name=sys.argv[2])
with TestClient(create_app(settings)) as client:
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.2)
    answer = client.post("/predict", content=open(sys.argv[3], "rb").read(),
                         headers={"content-type": "image/jpeg"}).json()
    engine = client.get("/metadata").json()["engine"]
print(json.dumps({"label": answer["predictions"][0]["top_k"][0]["class"], "engine": engine,
                  "imported": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_the_serving_process_imports_no_tensorflow_keras_or_great_expectations(on_engine):
    registry, jpeg = on_engine["params"].registry, on_engine["files"][0]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_TENSORFLOW,
            registry.tracking_uri,
            registry.model_name,
            str(jpeg),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=on_engine["work"],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["engine"] == "openvino" and result["label"] in on_engine["names"]
    assert "openvino" in result["imported"] and "fastapi" in result["imported"]
    assert set(UNWANTED) & set(result["imported"]) == set()


def test_predict_batch_runs_on_the_engine(on_engine, keras_model, tmp_path, caplog):
    params, folder = on_engine["params"], on_engine["files"][0].parent.parent
    with caplog.at_level(logging.INFO, logger="image_finetune.steps.predict_batch"):
        count = predict_batch(params, folder, tmp_path / "predictions.csv")
    assert "on openvino fp32" in caplog.text
    with (tmp_path / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert count == len(rows) == len(on_engine["files"])
    labelled = {row["file"]: row["predicted"] for row in rows}
    expected = keras_model.predict_on_batch(pixels(on_engine["files"])).argmax(axis=1)
    assert [labelled[str(f.relative_to(folder))] for f in on_engine["files"]] == [
        on_engine["names"][i] for i in expected
    ]


def test_moving_the_alias_loads_the_new_versions_engine_folder(on_engine, champion):
    params, work, url = on_engine["params"], on_engine["work"], on_engine["server"].url
    v2 = relabelled_copy(champion["model_path"], work / "relabelled.keras")
    evaluation = work / "evaluation-v2"
    evaluate_classifier(params, champion["data"], v2, evaluation, "test", "relabelled")
    final_gate(params, evaluation, work / "gate-v2.json")
    outcome = register(params, champion["data"], evaluation, work / "gate-v2.json", v2, "engine-2")
    calibration = np.asarray(load_split(champion["data"], "train").images[:64])
    folder = engine_folder(v2, work / "engine-v2", on_engine["names"], calibration)
    log_engine(params.registry.tracking_uri, params.registry.model_name, outcome["version"], folder)
    files = on_engine["files"][::20]
    promote(params.registry, outcome["version"], "test: move the alias to the int8 version")
    wait_until(
        lambda: httpx.get(f"{url}/metadata").json()["model_version"] == outcome["version"],
        timeout=120,
        what="the new version was never served",
    )
    metadata = httpx.get(f"{url}/metadata").json()
    assert (metadata["engine"], metadata["precision"]) == ("openvino", "int8")
    # v2's own int8 model answers (its classes are v1's rotated by one: v1 never agrees).
    int8 = open_predictor(folder, "openvino", "int8").predict_on_batch(pixels(files))
    assert top_labels(url, files) == [on_engine["names"][i] for i in int8.argmax(axis=1)]


def top_labels(url: str, files) -> list[str]:
    response = httpx.post(
        f"{url}/predict",
        timeout=60,
        files=[("files", (f.name, f.read_bytes(), "image/jpeg")) for f in files],
    )
    assert response.status_code == 200, response.text
    return [p["top_k"][0]["class"] for p in response.json()["predictions"]]
