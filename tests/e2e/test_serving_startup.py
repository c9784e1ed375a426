"""Starting as in a container: from an empty working directory, configured by environment
variables only, with the registry (a real MLflow server) not up yet. The server answers
its probes at once, reports 503 while it retries, becomes ready once the registry is up,
counts its 5xx, wants the bearer token from its Secret file, and leaves no model copy in
its temporary directory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from image_finetune.data.canonical import load_split
from tests.e2e.serving_support import Server, wait_for
from tests.support import free_port, wait_until

TOKEN = "s3cret-token-for-tests"
# One server's life in steps: unready while the registry is down, ready once it is up,
# then the registry going away again.
pytestmark = pytest.mark.ordered


@pytest.fixture(scope="module")
def registry_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def unready_server(champion, registry_port, tmp_path_factory):
    """A server whose registry is not up; its temp dir and token file of its own."""
    work = tmp_path_factory.mktemp("startup")
    (work / "tmp").mkdir()
    (work / "empty").mkdir()
    (work / "token").write_text(TOKEN + "\n")  # Secrets often end in a newline
    env = {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{registry_port}",
        "IMAGE_FINETUNE_MODEL_NAME": champion["params"].registry.model_name,
        "IMAGE_FINETUNE_RETRY_SECONDS": "1",
        "IMAGE_FINETUNE_POLL_SECONDS": "1",
        "IMAGE_FINETUNE_TOKEN_FILE": str(work / "token"),
        "TMPDIR": str(work / "tmp"),
        "IMAGE_FINETUNE_PROBE_PORT": str(free_port()),
    }
    server = Server(env, [], work / "empty")
    yield server, work / "tmp"
    server.stop()


@pytest.fixture(scope="module")
def registry(champion, registry_port, tmp_path_factory):
    """The champion's registry behind a real MLflow tracking server, once started."""
    mlflow = Path(sys.executable).parent / "mlflow"
    hosts = f"127.0.0.1,127.0.0.1:{registry_port},localhost,localhost:{registry_port}"
    process = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            champion["params"].registry.tracking_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(registry_port),
            "--workers",
            "1",
            "--allowed-hosts",
            hosts,
        ],
        cwd=tmp_path_factory.mktemp("registry"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # Without its job runner: seven fewer processes importing MLflow on a small machine.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    yield process
    with contextlib.suppress(ProcessLookupError):  # a test may have killed it already
        os.killpg(process.pid, signal.SIGTERM)  # the server and the workers it starts
    process.wait(timeout=30)


def infer_request(champion) -> tuple[str, dict]:
    """(the infer path, an OIP request for one real test image) for the champion's model."""
    image = load_split(champion["data"], "test").images[:1].tolist()
    return (
        f"/v2/models/{champion['params'].registry.model_name}/infer",
        {
            "inputs": [
                {"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": image}
            ]
        },
    )


def reason_unready(url: str) -> str:
    response = httpx.get(f"{url}/readyz")
    assert response.status_code == 503, response.text
    return response.json()["reason"]


def test_unready_while_the_registry_is_down_then_ready_when_it_is_up(unready_server, request):
    server, temp = unready_server
    probes = f"http://127.0.0.1:{server.env['IMAGE_FINETUNE_PROBE_PORT']}"
    wait_for(f"{server.url}/healthz", server.process)  # alive from the start
    wait_for(f"{probes}/healthz", server.process)  # on the probe port too
    # Its first try takes a while.
    wait_until(lambda: "unreachable" in reason_unready(server.url), 120)
    wait_until(lambda: "unreachable" in reason_unready(probes), 5)
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
    predicted = httpx.post(
        f"{server.url}/predict",
        content=b"x",
        headers={"content-type": "image/png", "authorization": f"Bearer {TOKEN}"},
    )
    assert predicted.status_code == 503 and "no model loaded yet" in predicted.json()["detail"]
    time.sleep(2)  # retries go on: still alive, still unready
    assert "unreachable" in reason_unready(server.url)
    request.getfixturevalue("registry")
    ready = wait_for(f"{server.url}/readyz", server.process, timeout=240)
    assert ready.json()["model_version"] in ("1", "2")
    assert wait_for(f"{probes}/readyz", server.process, timeout=5).json() == ready.json()
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'http_requests_total{method="GET",route="/readyz",status="503"}' in metrics
    assert 'route="/predict",status="503"' in metrics
    assert not [p for p in temp.rglob("*") if p.is_file() and p.stat().st_size > 100_000], (
        "a model copy was left in the temporary directory"
    )


def test_the_token_is_required_except_by_probes_and_metrics(champion, unready_server, registry):
    server, _ = unready_server
    wait_for(f"{server.url}/readyz", server.process)
    path, request = infer_request(champion)
    infer = f"{server.url}{path}"
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        refused = httpx.post(infer, json=request, headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["www-authenticate"] == "Bearer"
    allowed = httpx.post(infer, json=request, headers={"authorization": f"Bearer {TOKEN}"})
    assert allowed.status_code == 200, allowed.text
    assert httpx.get(f"{server.url}/metadata").status_code == 401
    for open_path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"):
        assert httpx.get(f"{server.url}{open_path}").status_code == 200, open_path


def test_serving_other_machines_without_a_token_is_refused(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "image_finetune.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "IMAGE_FINETUNE_MODEL_NAME": "x"},
        timeout=120,
    )
    assert result.returncode == 2
    assert "without a token" in result.stderr


def test_the_probe_process_goes_with_the_server_however_it_ends(tmp_path):
    """Killed outright, the server cannot stop its probe process: the process sees its
    input end and exits, so no probe answers for a server that is gone."""
    probe_port = free_port()
    env = {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # nobody there
        "IMAGE_FINETUNE_MODEL_NAME": "x",
        "IMAGE_FINETUNE_PROBE_PORT": str(probe_port),
    }
    server = Server(env, [], tmp_path)
    try:
        wait_for(f"http://127.0.0.1:{probe_port}/healthz", server.process)
        server.process.kill()
        server.process.wait()
    finally:
        server.stop()

    def refused() -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{probe_port}/healthz", timeout=1)
        except httpx.TransportError:
            return True
        return False

    wait_until(refused, 10, 0.2, "the probe process outlived its server")


def test_a_probe_port_that_cannot_be_had_is_refused_before_serving(tmp_path):
    port = free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    cases = ((port, "is the application's --port"), (taken.getsockname()[1], "cannot listen"))
    for probe_port, why in cases:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "image_finetune.cli",
                "serve",
                "--port",
                str(port),
                "--probe-port",
                str(probe_port),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "IMAGE_FINETUNE_MODEL_NAME": "x"},
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        assert why in result.stderr and "Traceback" not in result.stderr, result.stderr
    taken.close()


def refresh_failures(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    return float(
        next(
            line.split()[1]
            for line in metrics.splitlines()
            if line.startswith("model_refresh_failures_total ")
        )
    )


def answers_with(url: str, version: str, champion) -> None:
    path, request = infer_request(champion)
    infer = httpx.post(f"{url}{path}", json=request, headers={"authorization": f"Bearer {TOKEN}"})
    assert infer.status_code == 200, infer.text
    assert infer.json()["model_version"] == version
    assert httpx.get(f"{url}/readyz").json()["model_version"] == version


def test_a_failing_refresh_keeps_serving_the_loaded_model(
    champion, unready_server, registry, registry_port
):
    """The poller's failure paths, once the server is ready: the alias moved to a version that
    cannot be loaded, then the registry killed. Each failure is counted; the server keeps
    answering with the model it has, and stays ready."""
    from mlflow import MlflowClient

    server, _ = unready_server
    served = wait_for(f"{server.url}/readyz", server.process).json()["model_version"]
    name = champion["params"].registry.model_name
    client = MlflowClient(f"http://127.0.0.1:{registry_port}")
    run = client.create_run("0")  # a version whose run holds no model: it cannot be loaded
    broken = client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias(name, "champion", broken.version)
    try:
        failures = refresh_failures(server.url)
        wait_until(lambda: refresh_failures(server.url) >= failures + 2)
        answers_with(server.url, served, champion)
    finally:
        client.set_registered_model_alias(name, "champion", served)
    os.killpg(registry.pid, signal.SIGKILL)
    registry.wait(timeout=30)
    failures = refresh_failures(server.url)
    wait_until(lambda: refresh_failures(server.url) >= failures + 2)
    answers_with(server.url, served, champion)
