"""Benchmark: this project's HTTP service and `mlflow models serve` on the same registered
model, in the same run, under concurrent load on loopback.

Registers ``--model`` (a .keras classifier; without one, the default profile's architecture:
MobileNetV2 at 96x96 with the ImageNet weights from ../shared, same compute as its champion)
in a throwaway sqlite MLflow store, starts both servers (ours from an empty working
directory, configured by environment variables only), and drives each at concurrency 1, 4,
16 and 64 with keep-alive connections: ``hey`` where it is installed (apt-get install hey),
else an asyncio client. Payloads: one 32x32 CIFAR-10 JPEG, 32 of them (multipart), 32 as an
Open Inference Protocol UINT8 tensor, and mlflow's JSON for 1 and 32 images. While ours
serves single images at concurrency 16, /healthz is probed 20 times a second.
Prints requests/s, images/s and p50/p95/p99 latency, side by side.

Usage: python bench/serve_load.py [--model models/selected/model.keras] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
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
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED = Path(os.environ.get("IMAGE_FINETUNE_SHARED", ROOT.parent / "shared"))
CONCURRENCY = (1, 4, 16, 64)
BATCH = 32


@dataclass
class Payload:
    """One kind of request: where it goes and what it carries."""

    label: str
    port: int
    path: str
    content_type: str
    body: bytes
    images: int


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


# -- the model and the servers ---------------------------------------------------------------


def default_profile_model(path: Path) -> Path:
    """The default profile's classifier (uint8 32x32 in, resize to 96, MobileNetV2, head)."""
    from image_finetune.config import ModelParams
    from image_finetune.model import build_backbone, build_classifier, resolve_weights

    params = ModelParams(weights=str(SHARED / "weights" /
                                     "mobilenet_v2_1.0_imagenet_no_top.weights.h5"))
    backbone = build_backbone(params, params.image_size, resolve_weights(params, ROOT))
    build_classifier(backbone, 10, params, 32).save(path)
    return path


def register(model_path: Path, tracking_uri: str, name: str) -> None:
    import mlflow

    from image_finetune.inference import load_classifier
    from image_finetune.registry.versions import CHAMPION

    mlflow.set_tracking_uri(tracking_uri)
    model = load_classifier(model_path)
    example = np.zeros((1, *model.input_shape[1:]), np.uint8)
    signature = mlflow.models.infer_signature(example, model.predict_on_batch(example))
    with tempfile.TemporaryDirectory() as work, mlflow.start_run() as run:
        mlflow.keras.save_model(model, f"{work}/model", signature=signature)
        mlflow.log_artifacts(f"{work}/model", "model")
    client = mlflow.MlflowClient()
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model",
                                          run.info.run_id)
    client.set_registered_model_alias(name, CHAMPION, version.version)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], env: dict, ready_url: str, cwd: str) -> subprocess.Popen:
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    raise RuntimeError(f"{command[0]} not ready at {ready_url}")


# -- payloads --------------------------------------------------------------------------------


def cifar_jpegs(count: int) -> list[bytes]:
    """The first real CIFAR-10 test JPEGs of the shared archive."""
    jpegs = []
    with tarfile.open(SHARED / "data" / "cifar10-jpeg.tar.gz") as archive:
        for member in archive:
            if member.isfile() and member.name.startswith("test/"):
                jpegs.append(archive.extractfile(member).read())
                if len(jpegs) == count:
                    return jpegs
    raise RuntimeError("not enough test images in the archive")


def multipart(jpegs: list[bytes]) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
             f'filename="{i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode() + data + b"\r\n"
             for i, data in enumerate(jpegs)]
    return f"multipart/form-data; boundary={boundary}", b"".join(parts) + \
        f"--{boundary}--\r\n".encode()


def payloads(ours: int, theirs: int) -> list[Payload]:
    import io

    from PIL import Image

    jpegs = cifar_jpegs(BATCH)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs])
    form_type, form = multipart(jpegs)
    tensor = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": list(pixels.shape),
                          "data": pixels.ravel().tolist()}]}
    return [
        Payload("ours /predict, 1 JPEG", ours, "/predict", "image/jpeg", jpegs[0], 1),
        Payload(f"ours /predict, {BATCH} JPEGs", ours, "/predict", form_type, form, BATCH),
        Payload(f"ours OIP infer, {BATCH} UINT8", ours, "/v2/models/bench/infer",
                "application/json", json.dumps(tensor).encode(), BATCH),
        Payload("mlflow /invocations, 1 image", theirs, "/invocations", "application/json",
                json.dumps({"inputs": pixels[:1].tolist()}).encode(), 1),
        Payload(f"mlflow /invocations, {BATCH}", theirs, "/invocations", "application/json",
                json.dumps({"inputs": pixels.tolist()}).encode(), BATCH),
    ]


# -- load generators -------------------------------------------------------------------------


def run_hey(payload: Payload, concurrency: int, seconds: float) -> Figures:
    with tempfile.NamedTemporaryFile(suffix=".body") as body:
        body.write(payload.body)
        body.flush()
        out = subprocess.run(
            ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T",
             payload.content_type, "-D", body.name,
             f"http://127.0.0.1:{payload.port}{payload.path}"],
            capture_output=True, text=True, check=True).stdout
    quantile = {int(q): float(s) * 1000 for q, s in re.findall(r"(\d+)%+ in ([\d.]+) secs", out)}
    statuses = {code: int(n) for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    failures = sum(int(n) for n in re.findall(r"\[(\d+)\]\s+(?:Get|Post) ", out))
    requests = sum(statuses.values()) + failures
    errors = requests - statuses.get("200", 0)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    other = " ".join(f"{code}:{n}" for code, n in statuses.items() if code != "200")
    return Figures(rate, quantile.get(50, 0), quantile.get(95, 0), quantile.get(99, 0),
                   requests, errors, (other + (f" failed:{failures}" if failures else "")).strip())


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
    request = (f"POST {payload.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
               f"{payload.content_type}\r\nContent-Length: {len(payload.body)}\r\n\r\n"
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
    return Figures(len(latencies) / (time.perf_counter() - start), p50, p95, p99,
                   len(latencies), errors[0], f"not 200: {errors[0]}" if errors[0] else "")


def probe_health(port: int, stop: threading.Event, latencies: list[float]) -> None:
    """/healthz 20 times a second on a connection of its own."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.wait(0.05):
        begin = time.perf_counter()
        connection.request("GET", "/healthz")
        connection.getresponse().read()
        latencies.append((time.perf_counter() - begin) * 1000)


# -- the run ---------------------------------------------------------------------------------


def measure(payload: Payload, concurrency: int, seconds: float, client: str) -> Figures:
    if client == "hey":
        return run_hey(payload, concurrency, seconds)
    return asyncio.run(asyncio_load(payload, concurrency, seconds))


def model_totals(port: int) -> tuple[float, float, float]:
    """(model seconds, model calls, images) so far, from our server's /metrics."""
    lines = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines()
    value = {line.split()[0]: float(line.split()[1]) for line in lines
             if line.startswith(("inference_model_seconds_", "inference_batch_size_"))}
    return (value["inference_model_seconds_sum"], value["inference_model_seconds_count"],
            value["inference_batch_size_sum"])


def cell(milliseconds: float) -> str:
    """A latency, or "-" where the load generator had too few answers to give it."""
    return f"{milliseconds:>8.1f}" if milliseconds else f"{'-':>8}"


def bench(cases: list[Payload], seconds: float, client: str, health_port: int) -> None:
    print(f"{'payload':<32} {'conc':>4} {'req/s':>8} {'images/s':>9} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'p99 ms':>8} {'model ms/call':>13} {'img/call':>8}  not 200\n"
          "(images/s: answered with 200; model ms/call and img/call: our server's /metrics)")
    for payload in cases:
        measure(payload, 2, 1.0, client)  # warm-up: tracing, connections
        for concurrency in CONCURRENCY:
            health, stop = [], threading.Event()
            prober = None
            if payload.images == 1 and payload.port == health_port and concurrency == 16:
                prober = threading.Thread(target=probe_health, args=(health_port, stop, health))
                prober.start()
            ours = payload.port == health_port
            before = model_totals(health_port) if ours else None
            figures = measure(payload, concurrency, seconds, client)
            stop.set()
            if prober:
                prober.join()
            server = ""
            if before:
                after = model_totals(health_port)
                spent, calls, images = (b - a for a, b in zip(before, after, strict=True))
                server = f"{spent / max(calls, 1) * 1000:>13.1f} {images / max(calls, 1):>8.1f}"
            print(f"{payload.label:<32} {concurrency:>4} {figures.requests_per_second:>8.0f} "
                  f"{figures.ok_per_second * payload.images:>9.0f} {cell(figures.p50)}"
                  f"{cell(figures.p95)}{cell(figures.p99)} {server or ' ' * 22}  "
                  f"{figures.statuses or '-'}", flush=True)
            if health:
                p50, p99 = np.percentile(health, [50, 99])
                print(f"{'  /healthz meanwhile':<32} {'':>4} {len(health):>8} probes "
                      f"{'':>9} {p50:>8.1f} {'':>8} {p99:>8.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models/selected/model.keras")
    parser.add_argument("--seconds", type=float, default=5.0, help="per case")
    parser.add_argument("--client", choices=("hey", "asyncio"),
                        default="hey" if shutil.which("hey") else "asyncio")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        model = args.model if args.model.exists() else default_profile_model(
            Path(work) / "model.keras")
        uri = f"sqlite:///{work}/mlflow.db"
        register(model, uri, "bench")
        empty = Path(work) / "empty"
        empty.mkdir()
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TF_CPP_MIN_LOG_LEVEL": "2",
               "IMAGE_FINETUNE_MODEL_NAME": "bench"}
        ours, theirs = free_port(), free_port()
        servers = [
            start([str(BIN / "image-finetune"), "serve", "--port", str(ours)], env,
                  f"http://127.0.0.1:{ours}/readyz", str(empty)),
            start([str(BIN / "mlflow"), "models", "serve", "-m", "models:/bench@champion",
                   "--env-manager", "local", "--host", "127.0.0.1", "--port", str(theirs)],
                  {**env, "PATH": f"{BIN}:{os.environ['PATH']}"},
                  f"http://127.0.0.1:{theirs}/ping", work),
        ]
        try:
            print(f"model {'(default profile architecture)' if model != args.model else model}"
                  f"; client {args.client}; {args.seconds:.0f} s per case; "
                  f"load before: {os.getloadavg()[0]:.2f}")
            bench(payloads(ours, theirs), args.seconds, args.client, ours)
            print(f"load after: {os.getloadavg()[0]:.2f}")
        finally:
            for server in servers:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)


if __name__ == "__main__":
    main()
