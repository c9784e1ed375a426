"""What the benchmarks under bench/ share: the default profile's model, a throwaway registry,
starting and stopping a server process, real CIFAR-10 JPEGs and pixels, request payloads, and
the load generators (``hey`` where it is installed, else an asyncio client) with their
figures. The scripts import it as a sibling module (``from harness import ...``)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED = Path(os.environ.get("IMAGE_FINETUNE_SHARED", ROOT.parent / "shared"))
CIFAR_TARBALL = SHARED / "data" / "cifar10-jpeg.tar.gz"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_imagenet_no_top.weights.h5"


@dataclass
class Payload:
    """One kind of request: where it goes and what it carries."""

    label: str
    port: int
    path: str
    content_type: str
    body: bytes
    images: int
    headers: dict[str, str] = field(default_factory=dict)  # beside the content type


@dataclass
class Figures:
    requests_per_second: float  # answered, whatever the status
    p50: float
    p95: float
    p99: float
    requests: int
    errors: int  # not 200
    statuses: str = ""  # the non-200 answers by status, e.g. "503:12"

    @property
    def ok_per_second(self) -> float:
        return self.requests_per_second * (1 - self.errors / max(self.requests, 1))


def default_profile_model(path: Path) -> Path:
    """The default profile's classifier (uint8 32x32 in, resize to 96, MobileNetV2, head)."""
    from image_finetune.config import ModelParams
    from image_finetune.training.model import build_backbone, build_classifier

    params = ModelParams(weights=str(MOBILENET_WEIGHTS))
    backbone = build_backbone(params, params.image_size(params, ROOT))
    build_classifier(backbone, 10, params, 32).model.save(path)
    return path


def register(
    model_path: Path,
    tracking_uri: str,
    name: str,
    artifacts: dict[str, Path] | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Register the classifier as ``name``'s champion in the store at ``tracking_uri``, with
    folders logged beside it in its run ({artifact path: folder}: a reference profile, an
    engine folder) and tags on the version."""
    import mlflow

    from image_finetune.inference import load_classifier
    from image_finetune.registry.versions import CHAMPION

    mlflow.set_tracking_uri(tracking_uri)
    model = load_classifier(model_path)
    example = np.zeros((1, *model.input_shape[1:]), np.uint8)
    signature = mlflow.models.infer_signature(example, model.predict_on_batch(example))
    with tempfile.TemporaryDirectory() as work, mlflow.start_run() as run:
        # Requirements named, not inferred: inferring them loads the model again in a
        # subprocess (TensorFlow's import: seconds of CPU the servers' figures do not need).
        mlflow.keras.save_model(
            model, f"{work}/model", signature=signature, pip_requirements=["tensorflow", "keras"]
        )
        mlflow.log_artifacts(f"{work}/model", "model")
        for artifact_path, folder in (artifacts or {}).items():
            mlflow.log_artifacts(str(folder), artifact_path)
    client = mlflow.MlflowClient()
    client.create_registered_model(name)
    version = client.create_model_version(
        name, f"runs:/{run.info.run_id}/model", run.info.run_id, tags=tags
    )
    client.set_registered_model_alias(name, CHAMPION, version.version)


@contextlib.contextmanager
def mlflow_server(work: Path):
    """``mlflow server`` on a sqlite store under ``work``, artifacts proxied over HTTP (as a
    deployment reaches its registry): yields its URI."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = start(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{work / 'mlflow.db'}",
            "--artifacts-destination",
            str(work / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        f"http://127.0.0.1:{port}/health",
        str(work),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(
    command: list[str], env: dict, ready_url: str, cwd: str, poll_seconds: float = 0.5
) -> subprocess.Popen:
    """Start a server in a session of its own; returned once ``ready_url`` answers 200."""
    process = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {process.returncode} before ready")
        time.sleep(poll_seconds)
    stop(process)
    raise RuntimeError(f"{command[0]} not ready at {ready_url}")


def stop(process: subprocess.Popen, timeout: float = 60) -> None:
    """Stop a server started by ``start`` and whatever it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=timeout)


def cifar_jpegs(count: int) -> list[bytes]:
    """The first real CIFAR-10 test JPEGs of the shared archive."""
    jpegs = []
    with tarfile.open(CIFAR_TARBALL) as archive:
        for member in archive:
            if member.isfile() and member.name.startswith("test/"):
                jpegs.append(archive.extractfile(member).read())
                if len(jpegs) == count:
                    return jpegs
    raise RuntimeError("not enough test images in the archive")


def cifar_images(split: str, count: int) -> np.ndarray:
    """The first ``count`` real CIFAR-10 images of a split of the shared archive, decoded."""
    from PIL import Image

    images = []
    with tarfile.open(CIFAR_TARBALL) as archive:
        for member in archive:
            if member.isfile() and member.name.startswith(f"{split}/"):
                data = archive.extractfile(member).read()
                images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                if len(images) == count:
                    return np.stack(images)
    raise RuntimeError(f"not enough {split} images in the archive")


def cifar_per_class(split: str, per_class: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images, labels, class names): the first ``per_class`` images of every class of a
    split of the shared archive (it stores each class's images together)."""
    from PIL import Image

    files: dict[str, list[bytes]] = {}
    with tarfile.open(CIFAR_TARBALL) as archive:
        for member in archive:
            parts = member.name.split("/")
            if (
                member.isfile()
                and len(parts) == 3
                and parts[0] == split
                and len(files.setdefault(parts[1], [])) < per_class
            ):
                files[parts[1]].append(archive.extractfile(member).read())
    names = sorted(files)
    if not names or min(len(files[n]) for n in names) < per_class:
        raise RuntimeError(f"fewer than {per_class} {split} images of some class in the archive")
    images = [
        np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        for name in names
        for data in files[name]
    ]
    labels = np.repeat(np.arange(len(names)), per_class)
    return np.stack(images), labels, names


def multipart(jpegs: list[bytes]) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
        f'filename="{i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for i, data in enumerate(jpegs)
    ]
    return f"multipart/form-data; boundary={boundary}", b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode()


def run_hey(payload: Payload, concurrency: int, seconds: float) -> Figures:
    with tempfile.NamedTemporaryFile(suffix=".body") as body:
        body.write(payload.body)
        body.flush()
        out = subprocess.run(
            [
                "hey",
                "-z",
                f"{seconds}s",
                "-c",
                str(concurrency),
                "-m",
                "POST",
                "-T",
                payload.content_type,
                "-D",
                body.name,
                *[arg for k, v in payload.headers.items() for arg in ("-H", f"{k}: {v}")],
                f"http://127.0.0.1:{payload.port}{payload.path}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    quantile = {int(q): float(s) * 1000 for q, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", out)}
    statuses = {code: int(n) for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    failures = sum(int(n) for n in re.findall(r"\[(\d+)\]\s+(?:Get|Post) ", out))
    requests = sum(statuses.values()) + failures
    errors = requests - statuses.get("200", 0)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    other = " ".join(f"{code}:{n}" for code, n in statuses.items() if code != "200")
    return Figures(
        rate,
        quantile.get(50, 0),
        quantile.get(95, 0),
        quantile.get(99, 0),
        requests,
        errors,
        (other + (f" failed:{failures}" if failures else "")).strip(),
    )


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked); its status."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    length = re.search(r"(?im)^content-length:\s*(\d+)", head)
    if length:
        await reader.readexactly(int(length.group(1)))
        return status
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return status


async def asyncio_load(payload: Payload, concurrency: int, seconds: float) -> Figures:
    request = (
        f"POST {payload.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
        f"{payload.content_type}\r\nContent-Length: {len(payload.body)}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in payload.headers.items())
        + "\r\n"
    ).encode() + payload.body
    latencies: list[float] = []
    errors = [0]
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", payload.port)
        while time.perf_counter() < deadline:
            begin = time.perf_counter()
            writer.write(request)
            status = await read_response(reader)
            latencies.append((time.perf_counter() - begin) * 1000)
            errors[0] += status != 200
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return Figures(
        len(latencies) / (time.perf_counter() - start),
        p50,
        p95,
        p99,
        len(latencies),
        errors[0],
        f"not 200: {errors[0]}" if errors[0] else "",
    )


def probe_health(
    port: int, stop: threading.Event, latencies: list[float], reconnect: bool = False
) -> None:
    """/healthz 20 times a second on a connection of its own, or on a new connection each
    time (``reconnect``: as a kubelet probes, the connection counted in the latency)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.wait(0.05):
        begin = time.perf_counter()
        connection.request("GET", "/healthz")
        connection.getresponse().read()
        if reconnect:
            connection.close()
        latencies.append((time.perf_counter() - begin) * 1000)


def default_client() -> str:
    """``hey`` where it is installed (apt-get install hey), else the asyncio client."""
    return "hey" if shutil.which("hey") else "asyncio"


def measure(payload: Payload, concurrency: int, seconds: float, client: str) -> Figures:
    if client == "hey":
        return run_hey(payload, concurrency, seconds)
    return asyncio.run(asyncio_load(payload, concurrency, seconds))
