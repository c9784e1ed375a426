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
import io
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (bench/harness.py: what the benchmarks share)
    BIN,
    ROOT,
    Payload,
    cifar_jpegs,
    default_client,
    default_profile_model,
    free_port,
    measure,
    multipart,
    probe_health,
    register,
    start,
    stop,
)

CONCURRENCY = (1, 4, 16, 64)
BATCH = 32


# -- payloads --------------------------------------------------------------------------------


def payloads(ours: int, theirs: int) -> list[Payload]:
    from PIL import Image

    jpegs = cifar_jpegs(BATCH)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs])
    form_type, form = multipart(jpegs)
    tensor = {
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": list(pixels.shape),
                "data": pixels.ravel().tolist(),
            }
        ]
    }
    return [
        Payload("ours /predict, 1 JPEG", ours, "/predict", "image/jpeg", jpegs[0], 1),
        Payload(f"ours /predict, {BATCH} JPEGs", ours, "/predict", form_type, form, BATCH),
        Payload(
            f"ours OIP infer, {BATCH} UINT8",
            ours,
            "/v2/models/bench/infer",
            "application/json",
            json.dumps(tensor).encode(),
            BATCH,
        ),
        Payload(
            "mlflow /invocations, 1 image",
            theirs,
            "/invocations",
            "application/json",
            json.dumps({"inputs": pixels[:1].tolist()}).encode(),
            1,
        ),
        Payload(
            f"mlflow /invocations, {BATCH}",
            theirs,
            "/invocations",
            "application/json",
            json.dumps({"inputs": pixels.tolist()}).encode(),
            BATCH,
        ),
    ]


# -- the run ---------------------------------------------------------------------------------


def model_totals(port: int) -> tuple[float, float, float]:
    """(model seconds, model calls, images) so far, from our server's /metrics."""
    lines = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines()
    value = {
        line.split()[0]: float(line.split()[1])
        for line in lines
        if line.startswith(("inference_model_seconds_", "inference_batch_size_"))
    }
    return (
        value["inference_model_seconds_sum"],
        value["inference_model_seconds_count"],
        value["inference_batch_size_sum"],
    )


def cell(milliseconds: float) -> str:
    """A latency, or "-" where the load generator had too few answers to give it."""
    return f"{milliseconds:>8.1f}" if milliseconds else f"{'-':>8}"


def bench(cases: list[Payload], seconds: float, client: str, health_port: int) -> None:
    print(
        f"{'payload':<32} {'conc':>4} {'req/s':>8} {'images/s':>9} {'p50 ms':>8} "
        f"{'p95 ms':>8} {'p99 ms':>8} {'model ms/call':>13} {'img/call':>8}  not 200\n"
        "(images/s: answered with 200; model ms/call and img/call: our server's /metrics)"
    )
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
            print(
                f"{payload.label:<32} {concurrency:>4} {figures.requests_per_second:>8.0f} "
                f"{figures.ok_per_second * payload.images:>9.0f} {cell(figures.p50)}"
                f"{cell(figures.p95)}{cell(figures.p99)} {server or ' ' * 22}  "
                f"{figures.statuses or '-'}",
                flush=True,
            )
            if health:
                p50, p99 = np.percentile(health, [50, 99])
                print(
                    f"{'  /healthz meanwhile':<32} {'':>4} {len(health):>8} probes "
                    f"{'':>9} {p50:>8.1f} {'':>8} {p99:>8.1f}",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models/selected/model.keras")
    parser.add_argument("--seconds", type=float, default=5.0, help="per case")
    parser.add_argument("--client", choices=("hey", "asyncio"), default=default_client())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        model = (
            args.model if args.model.exists() else default_profile_model(Path(work) / "model.keras")
        )
        uri = f"sqlite:///{work}/mlflow.db"
        register(model, uri, "bench")
        empty = Path(work) / "empty"
        empty.mkdir()
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": uri,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "IMAGE_FINETUNE_MODEL_NAME": "bench",
        }
        ours, theirs = free_port(), free_port()
        servers = [
            start(
                [str(BIN / "image-finetune"), "serve", "--port", str(ours)],
                env,
                f"http://127.0.0.1:{ours}/readyz",
                str(empty),
            ),
            start(
                [
                    str(BIN / "mlflow"),
                    "models",
                    "serve",
                    "-m",
                    "models:/bench@champion",
                    "--env-manager",
                    "local",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(theirs),
                ],
                {**env, "PATH": f"{BIN}:{os.environ['PATH']}"},
                f"http://127.0.0.1:{theirs}/ping",
                work,
            ),
        ]
        try:
            print(
                f"model {'(default profile architecture)' if model != args.model else model}"
                f"; client {args.client}; {args.seconds:.0f} s per case; "
                f"load before: {os.getloadavg()[0]:.2f}"
            )
            bench(payloads(ours, theirs), args.seconds, args.client, ours)
            print(f"load after: {os.getloadavg()[0]:.2f}")
        finally:
            for server in servers:
                stop(server, timeout=30)


if __name__ == "__main__":
    main()
