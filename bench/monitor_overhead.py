"""Benchmark: what drift monitoring costs the server. One registered model with its reference
profile, served by two processes of this project's server, one with monitoring on (windows of
``--window`` images, tested on the server's monitor thread) and one with it off; each is
driven in turn, rounds alternating, at concurrency 16 with keep-alive connections (``hey``
where installed, else an asyncio client) with one CIFAR-10 JPEG and with 32 per request.
Prints requests/s, images/s and p50/p99 latency side by side, the relative change, and what
the monitored server did: windows tested, images sampled into windows, skipped by the
sampling share (and the share now), and dropped because its queue was full.

Usage: python bench/monitor_overhead.py [--model models/selected/model.keras] [--seconds 10]
       [--batch-seconds 30] [--rounds 2] [--window 500]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (bench/harness.py: what the benchmarks share)
    BIN,
    Payload,
    cifar_images,
    cifar_jpegs,
    default_client,
    default_profile_model,
    free_port,
    measure,
    multipart,
    register,
    start,
    stop,
)

CONCURRENCY = 16
BATCH = 32


def reference_profile(model_path: Path, out: Path) -> Path:
    """The model's reference profile: 1000 test images, PCA fitted on 500 training ones."""
    from image_finetune.inference import load_classifier
    from image_finetune.monitoring.profile import build_profile
    from image_finetune.monitoring.summaries import embedding_model, image_statistics, summarise

    summaries = embedding_model(load_classifier(model_path))
    _, training = summarise(summaries, cifar_images("train", 500), 100)
    reference = cifar_images("test", 1000)
    probabilities, embeddings = summarise(summaries, reference, 100)
    names = [str(i) for i in range(probabilities.shape[1])]
    build_profile(names, probabilities, embeddings, image_statistics(reference), training).save(out)
    return out


def monitor_counts(port: int) -> dict[str, float]:
    """What the monitored server on ``port`` did: windows tested, images monitored, skipped
    (not sampled), dropped (queue full), and the sampling share now."""
    state = httpx.get(f"http://127.0.0.1:{port}/monitoring", timeout=10).json()
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text

    def total(metric: str) -> float:
        return sum(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"{metric}{{")
        )

    return {
        "windows": state["windows_tested"],
        "share": state.get("sample_share", 1.0),
        **{
            name: total(f"image_finetune_monitor_{name}_total")
            for name in ("images", "skipped", "dropped")
        },
    }


def mean_of_given(values: list[float]) -> float:
    """The mean of the latencies the load generator gave (0: too few answers, left out)."""
    given = [v for v in values if v]
    return float(np.mean(given)) if given else 0.0


def change(on: float, off: float) -> str:
    return f"{100 * (on / off - 1):>+7.1f}%" if on and off else f"{'-':>8}"


def bench(
    ports: dict[str, int], seconds: float, batch_seconds: float, rounds: int, client: str
) -> None:
    jpegs = cifar_jpegs(BATCH)
    form_type, form = multipart(jpegs)
    print(
        f"{'payload':<16} {'monitor':>7} {'req/s':>8} {'images/s':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8}   (concurrency {CONCURRENCY}, {rounds} rounds of {seconds:.0f} s "
        f"(1 JPEG) or {batch_seconds:.0f} s ({BATCH}), alternating, the order too)"
    )
    for label, content_type, body, images in (
        ("1 JPEG", "image/jpeg", jpegs[0], 1),
        (f"{BATCH} JPEGs", form_type, form, BATCH),
    ):
        span = seconds if images == 1 else batch_seconds  # enough answers for a p99
        results: dict[str, list] = {mode: [] for mode in ports}
        for port in ports.values():  # warm-up: tracing, connections
            measure(Payload(label, port, "/predict", content_type, body, images), 4, 2, client)
        for round_ in range(rounds):  # on first, then off first: neither always leads
            for mode, port in list(ports.items())[:: 1 if round_ % 2 == 0 else -1]:
                payload = Payload(label, port, "/predict", content_type, body, images)
                results[mode].append(measure(payload, CONCURRENCY, span, client))
        summary = {}
        for mode, figures in results.items():
            rate = float(np.mean([f.ok_per_second for f in figures]))
            p50 = mean_of_given([f.p50 for f in figures])
            p99 = mean_of_given([f.p99 for f in figures])
            summary[mode] = (rate, p99)
            errors = sum(f.errors for f in figures)
            spread = " / ".join(f"{f.ok_per_second:.1f} req/s {f.p99:.0f} ms" for f in figures)
            print(
                f"{label:<16} {mode:>7} {rate:>8.1f} {rate * images:>9.0f} {p50:>8.1f} "
                f"{p99:>8.1f}   rounds: {spread}" + (f"   not 200: {errors}" if errors else ""),
                flush=True,
            )
        (on_rate, on_p99), (off_rate, off_p99) = summary["on"], summary["off"]
        print(
            f"{label:<16} {'change':>7} {change(on_rate, off_rate)} "
            f"{'':>9} {'':>8} {change(on_p99, off_p99)}"
        )
    counts = monitor_counts(ports["on"])
    print(
        f"monitored server: {counts['windows']} windows tested, {counts['images']:.0f} "
        f"images monitored, {counts['skipped']:.0f} skipped by sampling (share now "
        f"{counts['share']:.3f}), {counts['dropped']:.0f} dropped (queue full)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("models/selected/model.keras"))
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument(
        "--batch-seconds",
        type=float,
        default=30.0,
        help=f"per measurement of {BATCH} JPEGs a request",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--client", choices=("hey", "asyncio"), default=default_client())
    args = parser.parse_args()
    from image_finetune.monitoring.profile import PROFILE_FOLDER

    with tempfile.TemporaryDirectory() as work:
        model = (
            args.model if args.model.exists() else default_profile_model(Path(work) / "model.keras")
        )
        uri = f"sqlite:///{work}/mlflow.db"
        register(
            model, uri, "bench", {PROFILE_FOLDER: reference_profile(model, Path(work) / "profile")}
        )
        empty = Path(work) / "empty"
        empty.mkdir()
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": uri,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "IMAGE_FINETUNE_MODEL_NAME": "bench",
            "IMAGE_FINETUNE_MONITOR_WINDOW": str(args.window),
        }
        ports = {"on": free_port(), "off": free_port()}
        servers = [
            start(
                [str(BIN / "image-finetune"), "serve", "--port", str(port)],
                {**env, "IMAGE_FINETUNE_MONITOR": mode},
                f"http://127.0.0.1:{port}/readyz",
                str(empty),
            )
            for mode, port in ports.items()
        ]
        try:
            print(
                f"model {'(default profile architecture)' if model != args.model else model}"
                f"; client {args.client}; window {args.window}; "
                f"load before: {os.getloadavg()[0]:.2f}"
            )
            bench(ports, args.seconds, args.batch_seconds, args.rounds, args.client)
            print(f"load after: {os.getloadavg()[0]:.2f}")
        finally:
            for server in servers:
                stop(server)


if __name__ == "__main__":
    main()
