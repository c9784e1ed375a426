"""The slim serving image (infra/docker/Dockerfile.serve: OpenVINO, no TensorFlow) started as
the Kubernetes Deployment starts it (command, args, user, read-only root file system, no
capabilities), against a real model registered with its engine folder behind an MLflow
tracking server: it serves on OpenVINO, its labels for the test split are the offline
evaluation's, and nothing of TensorFlow, Keras or Great Expectations is in it."""

import secrets
import shutil
import time

import httpx
import numpy as np
import pytest

from image_finetune.data.canonical import load_split
from image_finetune.pipelines.containers import Mount
from image_finetune.pipelines.deployment import Deployment
from image_finetune.steps.evaluate import evaluate_classifier
from image_finetune.steps.layout import read_evaluation
from tests.containers.test_serving_container import logs, ready
from tests.engine_registry import engine_registry
from tests.serving_container import start_server_container
from tests.support import free_port, missing_part, wait_until

MODEL_NAME = "slim-served"


@pytest.fixture(scope="session")
def serve_image(docker_client) -> str:
    """The serving image build.sh tags beside the CPU image ($IMAGE-serve)."""
    import docker

    tag = f"{Deployment().image}-serve"
    try:
        docker_client.images.get(tag)
    except docker.errors.ImageNotFound:
        missing_part(f"image {tag} not built (bash infra/docker/build.sh)")
    return tag


def bridge_gateway(docker_client) -> str:
    """The host's address on Docker's default bridge: where a container reaches the host."""
    return docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]


@pytest.fixture(scope="module")
def slim_server(docker_client, serve_image, open_workspace, small_model):
    """The small model evaluated offline on its test split and registered with its engine
    folder, served from the slim image."""
    work = open_workspace / "slim"
    (work / "registry").mkdir(parents=True)
    data = shutil.copytree(small_model["data"], work / "data")  # readable by the image's user
    evaluation = work / "evaluation"
    params = small_model["params"]  # without flip TTA: the server answers one pass
    params = params.model_copy(
        update={"evaluate": params.evaluate.model_copy(update={"flip_tta": False})}
    )
    evaluate_classifier(params, data, small_model["model"], evaluation, "test", "offline")
    token_folder = work / "secret"
    token_folder.mkdir()
    token = secrets.token_hex(16)
    (token_folder / "token").write_text(token + "\n")
    with engine_registry(
        small_model["model"],
        data,
        work / "registry",
        MODEL_NAME,
        host=bridge_gateway(docker_client),
    ) as registry:
        port = free_port()
        start = time.perf_counter()
        container = start_server_container(
            docker_client,
            serve_image,
            {"IMAGE_FINETUNE_MODEL_NAME": MODEL_NAME, "MLFLOW_TRACKING_URI": registry["uri"]},
            token_folder,
            [Mount(work / "registry", writable=False)],
            port,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(
                lambda: ready(url, container),
                timeout=240,
                what=f"the slim serving container never became ready: {logs(container)}",
            )
            yield {
                "url": url,
                "token": token,
                "container": container,
                "data": data,
                "evaluation": evaluation,
                "names": registry["names"],
                "ready_seconds": time.perf_counter() - start,
            }
        finally:
            container.remove(force=True)


def test_the_slim_image_labels_the_test_split_as_the_offline_evaluation(slim_server):
    url, headers = slim_server["url"], {"authorization": f"Bearer {slim_server['token']}"}
    metadata = httpx.get(f"{url}/metadata", headers=headers).json()
    assert (metadata["engine"], metadata["precision"]) == ("openvino", "fp32")
    images = np.asarray(load_split(slim_server["data"], "test").images)
    _, offline, _ = read_evaluation(slim_server["evaluation"])
    labels = []
    for start in range(0, len(images), 50):  # the Deployment's 64 images per request at most
        chunk = images[start : start + 50]
        response = httpx.post(
            f"{url}/v2/models/{MODEL_NAME}/infer",
            headers=headers,
            timeout=120,
            json={
                "inputs": [
                    {
                        "name": "images",
                        "datatype": "UINT8",
                        "shape": list(chunk.shape),
                        "data": chunk.ravel().tolist(),
                    }
                ]
            },
        )
        assert response.status_code == 200, response.text
        labels += {o["name"]: o for o in response.json()["outputs"]}["labels"]["data"]
    # Where the offline top two classes are within the engine's tolerance (1e-4), either
    # label is the model's answer: those ties are left out (a small model has a few).
    ordered = np.sort(offline, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] > 1e-4
    assert clear.mean() > 0.9
    expected = [slim_server["names"][i] for i in np.argmax(offline, axis=1)]
    assert [a for a, c in zip(labels, clear, strict=True) if c] == [
        e for e, c in zip(expected, clear, strict=True) if c
    ]
    print(
        f"slim serving container: ready in {slim_server['ready_seconds']:.1f} s, "
        f"{len(labels)} test images labelled as offline"
    )


def test_the_slim_image_has_no_tensorflow_keras_or_great_expectations(slim_server):
    code, output = slim_server["container"].exec_run(
        [
            "python3",
            "-c",
            (
                "import importlib.util as u; print([n for n in ('tensorflow', 'keras', "
                "'great_expectations', 'onnx', 'nncf') if u.find_spec(n)])"
            ),
        ]
    )
    assert code == 0 and output.decode().strip() == "[]", output.decode()
    code, output = slim_server["container"].exec_run(["id", "-u"])
    assert output.decode().strip() == "1000"
