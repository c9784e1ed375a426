"""Benchmark: a bounded load test on loopback of this project's HTTP service and of
`mlflow models serve`, on the same registered model, in the same run.

Registers ``--model`` (a .keras classifier) in a throwaway sqlite MLflow store, starts both
servers on free loopback ports, sends ``--requests`` sequential requests of one image and
of ``--batch`` images to each, and prints p50/p95/p99 latency and throughput.
Usage: python bench/serve_load.py --model models/selected/model.keras [--requests 200]
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], env: dict, ready_url: str) -> subprocess.Popen:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    raise RuntimeError(f"{command[0]} not ready at {ready_url}")


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


def measure(send, requests: int, images_per_request: int) -> str:
    send()  # warm-up
    times = []
    start = time.perf_counter()
    for _ in range(requests):
        begin = time.perf_counter()
        send()
        times.append((time.perf_counter() - begin) * 1000)
    total = time.perf_counter() - start
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return (f"p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  p99 {p99:7.1f} ms  "
            f"{requests * images_per_request / total:7.0f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=ROOT / "models/selected/model.keras")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
    pngs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    with tempfile.TemporaryDirectory() as work:
        uri = f"sqlite:///{work}/mlflow.db"
        register(args.model, uri, "bench")
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TF_CPP_MIN_LOG_LEVEL": "2"}
        params = Path(work) / "params.yaml"
        params.write_text(f"registry: {{tracking_uri: '{uri}', model_name: bench}}\n"
                          "train: {ladder: [{name: x}]}\n")
        ours_port, mlflow_port = free_port(), free_port()
        servers = [
            start([str(BIN / "image-finetune"), "serve", "-p", str(params), "--port",
                   str(ours_port)], env, f"http://127.0.0.1:{ours_port}/readyz"),
            start([str(BIN / "mlflow"), "models", "serve", "-m", "models:/bench@champion",
                   "--env-manager", "local", "--host", "127.0.0.1", "--port", str(mlflow_port)],
                  {**env, "PATH": f"{BIN}:{os.environ['PATH']}"},
                  f"http://127.0.0.1:{mlflow_port}/ping"),
        ]
        try:
            with httpx.Client(timeout=120) as http:
                ours = f"http://127.0.0.1:{ours_port}/predict"
                theirs = f"http://127.0.0.1:{mlflow_port}/invocations"
                cases = {
                    "image-finetune serve, 1 PNG":
                        (lambda: http.post(ours, content=pngs[0],
                                           headers={"content-type": "image/png"}), 1),
                    f"image-finetune serve, {args.batch} PNGs":
                        (lambda: http.post(ours, files=[("files", (f"{i}.png", p, "image/png"))
                                                        for i, p in enumerate(pngs)]),
                         args.batch),
                    "mlflow models serve, 1 image (JSON)":
                        (lambda: http.post(theirs, json={"inputs": images[:1].tolist()}), 1),
                    f"mlflow models serve, {args.batch} images (JSON)":
                        (lambda: http.post(theirs, json={"inputs": images.tolist()}),
                         args.batch),
                }
                print(f"{args.requests} sequential requests each, loopback, model {args.model}")
                for label, (send, count) in cases.items():
                    print(f"  {label:<40} {measure(send, args.requests, count)}")
        finally:
            for server in servers:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)


if __name__ == "__main__":
    main()
