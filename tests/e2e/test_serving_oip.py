"""The Open Inference Protocol (KServe v2 REST) against a real server process: health,
metadata, and inference round trips (JSON tensors, base64 BYTES of files, the binary tensor
data extension) that return the Keras model's own probabilities; and the OpenAPI document
describing both APIs."""

from __future__ import annotations

import base64
import json
import struct

import httpx
import numpy as np
import pytest

from image_finetune.data.canonical import load_split, read_manifest
from image_finetune.data.images import decode_image
from image_finetune.inference import load_classifier


@pytest.fixture(scope="module")
def model_name(champion) -> str:
    return champion["params"].registry.model_name


@pytest.fixture(scope="module")
def keras_model(champion):
    return load_classifier(champion["model_path"])


@pytest.fixture(scope="module")
def class_names(champion) -> list[str]:
    return read_manifest(champion["data"])["class_names"]


def outputs_by_name(body: dict) -> dict[str, dict]:
    return {output["name"]: output for output in body["outputs"]}


def test_health_and_metadata(server, model_name):
    url = server.url
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    assert "binary_tensor_data" in httpx.get(f"{url}/v2").json()["extensions"]
    metadata = httpx.get(f"{url}/v2/models/{model_name}").json()
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert {o["name"]: o["shape"] for o in metadata["outputs"]} == {
        "probabilities": [-1, 10],
        "labels": [-1],
    }
    [version] = metadata["versions"]
    assert metadata["platform"] == "keras"  # no engine folder: served on Keras
    assert metadata["parameters"] == {"engine": "tensorflow", "precision": "fp32"}
    assert httpx.get(f"{url}/v2/models/{model_name}/ready").json()["ready"] is True
    assert httpx.get(f"{url}/v2/models/{model_name}/versions/{version}/ready").status_code == 200
    missing = httpx.get(f"{url}/v2/models/{model_name}/versions/999")
    assert missing.status_code == 404 and "not served" in missing.json()["error"]


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_uint8_tensor_round_trip_gives_the_keras_probabilities(
    champion, server, model_name, keras_model, class_names, layout
):
    images = np.asarray(load_split(champion["data"], "test").images[:8])
    data = images.tolist() if layout == "nested" else images.ravel().tolist()
    response = httpx.post(
        f"{server.url}/v2/models/{model_name}/infer",
        timeout=60,
        json={
            "id": "round-trip",
            "inputs": [
                {"name": "images", "datatype": "UINT8", "shape": list(images.shape), "data": data}
            ],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "round-trip" and body["model_name"] == model_name
    outputs = outputs_by_name(body)
    expected = np.asarray(keras_model.predict_on_batch(images))
    assert outputs["probabilities"]["shape"] == [8, 10]
    served = np.asarray(outputs["probabilities"]["data"], np.float32).reshape(8, 10)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert outputs["labels"]["data"] == [class_names[i] for i in expected.argmax(axis=1)]


def test_bytes_of_encoded_files_are_decoded_as_offline(champion, server, model_name, keras_model):
    files = sorted((champion["folder"] / "test" / "ship").glob("*.jpg"))[:4]
    response = httpx.post(
        f"{server.url}/v2/models/{model_name}/infer",
        timeout=60,
        json={
            "inputs": [
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [len(files)],
                    "data": [base64.b64encode(f.read_bytes()).decode() for f in files],
                }
            ],
            "outputs": [{"name": "probabilities"}],
        },
    )
    assert response.status_code == 200, response.text
    outputs = outputs_by_name(response.json())
    assert set(outputs) == {"probabilities"}
    images = np.stack([decode_image(f.read_bytes(), f.name, 32, "resize") for f in files])
    np.testing.assert_allclose(
        np.reshape(outputs["probabilities"]["data"], (len(files), 10)),
        keras_model.predict_on_batch(images),
        atol=1e-5,
    )


def test_binary_tensor_data_extension_round_trip(
    champion, server, model_name, keras_model, class_names
):
    """As Triton's clients send by default: the JSON header, then the raw tensor bytes."""
    images = np.asarray(load_split(champion["data"], "test").images[8:12])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "UINT8",
                    "shape": list(images.shape),
                    "parameters": {"binary_data_size": images.nbytes},
                }
            ],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}},
                {"name": "labels", "parameters": {"binary_data": True}},
            ],
        }
    ).encode()
    response = httpx.post(
        f"{server.url}/v2/models/{model_name}/infer",
        timeout=60,
        content=header + images.tobytes(),
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    outputs = outputs_by_name(json.loads(response.content[:length]))
    binary = response.content[length:]
    size = outputs["probabilities"]["parameters"]["binary_data_size"]
    probabilities = np.frombuffer(binary[:size], "<f4").reshape(4, 10)
    expected = np.asarray(keras_model.predict_on_batch(images))
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    labels, rest = [], binary[size:]
    while rest:
        (n,) = struct.unpack_from("<I", rest)
        labels.append(rest[4 : 4 + n].decode())
        rest = rest[4 + n :]
    assert labels == [class_names[i] for i in expected.argmax(axis=1)]


def test_openapi_documents_both_apis_with_their_models(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    schemas = spec["components"]["schemas"]
    predict = spec["paths"]["/predict"]["post"]
    assert {"multipart/form-data", "image/png", "image/jpeg"} <= set(
        predict["requestBody"]["content"]
    )
    assert predict["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictResponse"
    }
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    reference = infer["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert reference.rsplit("/", 1)[1] in schemas
    assert {
        "InferRequest",
        "RequestInput",
        "InferResponse",
        "ResponseOutput",
        "PredictResponse",
        "ModelMetadata",
    } <= set(schemas)
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"], path
