"""The inference server in the CPU image, started exactly as the Kubernetes Deployment
starts it (infra/k8s/base/serving.yaml: command, args, environment, user, read-only root file
system, no capabilities), configured by environment variables only: it serves the champion
the containerized pipeline registered, and labels real test images over HTTP."""

import secrets
import time

import httpx
import pytest

from image_finetune.pipelines.containers import Mount, tracking_folder
from tests.serving_container import start_server_container
from tests.support import free_port, wait_until


@pytest.fixture(scope="module")
def serving_container(docker_client, cpu_image, container_run):
    assert container_run.local.succeeded, container_run.local.error
    registry = container_run.params.registry
    token = secrets.token_hex(16)
    token_file = container_run.workspace / "secret" / "token"
    token_file.parent.mkdir()
    token_file.write_text(token + "\n")
    token_file.chmod(0o444)
    port = free_port()
    start = time.perf_counter()
    container = start_server_container(
        docker_client,
        cpu_image,
        {
            "IMAGE_FINETUNE_MODEL_NAME": registry.model_name,
            "MLFLOW_TRACKING_URI": registry.tracking_uri,
        },
        token_file.parent,
        [Mount(tracking_folder(registry.tracking_uri), writable=True)],
        port,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: ready(url, container),
            timeout=240,
            what=f"the serving container never became ready: {logs(container)}",
        )
        ready_seconds = time.perf_counter() - start
        yield {
            "url": url,
            "token": token,
            "container": container,
            "ready_seconds": ready_seconds,
            "folder": container_run.workspace / "data",
        }
    finally:
        container.remove(force=True)


def logs(container) -> str:
    return container.logs().decode(errors="replace")[-3000:]


def ready(url: str, container) -> bool:
    container.reload()
    assert container.status in ("created", "running"), logs(container)
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_the_served_champion_labels_real_test_images(serving_container):
    url, token = serving_container["url"], serving_container["token"]
    folder = serving_container["folder"] / "test"
    files = sorted(folder.glob("*/*.jpg"))
    classes = sorted(p.name for p in folder.iterdir())
    start = time.perf_counter()
    first = httpx.post(
        f"{url}/predict",
        content=files[0].read_bytes(),
        timeout=60,
        headers={"content-type": "image/jpeg", "authorization": f"Bearer {token}"},
    )
    first_ms = (time.perf_counter() - start) * 1000
    assert first.status_code == 200, first.text
    correct = 0
    for offset in range(0, len(files), 50):
        chunk = files[offset : offset + 50]
        response = httpx.post(
            f"{url}/predict",
            timeout=60,
            headers={"authorization": f"Bearer {token}"},
            files=[("files", (f.name, f.read_bytes(), "image/jpeg")) for f in chunk],
        )
        assert response.status_code == 200, response.text
        for file, prediction in zip(chunk, response.json()["predictions"], strict=True):
            assert {answer["class"] for answer in prediction["top_k"]} <= set(classes)
            correct += prediction["top_k"][0]["class"] == file.parent.name
    print(
        f"serving container: ready in {serving_container['ready_seconds']:.1f} s, first "
        f"request {first_ms:.0f} ms, test accuracy {correct / len(files):.3f}"
    )
    assert correct / len(files) >= 0.3  # the gate the registered model passed on test


def test_the_server_runs_as_the_deployments_user_and_refuses_strangers(serving_container):
    url, container = serving_container["url"], serving_container["container"]
    code, output = container.exec_run(["id", "-u"])
    assert code == 0 and output.decode().strip() == "1000"
    refused = httpx.post(
        f"{url}/predict", content=b"x", timeout=10, headers={"content-type": "image/jpeg"}
    )
    assert refused.status_code == 401
