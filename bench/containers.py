"""Benchmark: the pipeline in containers against the subprocess runner, and the image's
start-up. Figures only.

    .venv/bin/python bench/containers.py [--per-class 30]

On the same real subset (the first N training and N/3 test images per CIFAR-10 class), with
the two-rung ladder whose first rung fails, each from nothing (empty caches, own MLflow
store): the wall time of `run-local` with each runner; then the CPU image's container start
(``true``, and importing TensorFlow), and the server container started as the Deployment
starts it: seconds to ready, the first request's latency and then single-image latencies.
Needs dockerd and the image (bash infra/docker/build.sh).
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from image_finetune.config import Params  # noqa: E402
from image_finetune.pipelines.containers import Mount, tracking_folder  # noqa: E402
from image_finetune.pipelines.deployment import Deployment  # noqa: E402
from image_finetune.pipelines.local import run_local  # noqa: E402
from tests.serving_container import start_server_container  # noqa: E402

SHARED = ROOT.parent / "shared"
LADDER = [  # tests/conftest.py's FAIL_THEN_PASS_LADDER
    {"name": "hopeless-head", "epochs": 1, "learning_rate": 1.0e-7, "batch_size": 64},
    {
        "name": "top-blocks",
        "unfreeze_from": "block_13_expand",
        "epochs": 2,
        "learning_rate": 0.0005,
        "batch_size": 32,
    },
]


def subset_params(work: Path, per_class: int, runner: str) -> Params:
    from image_finetune.config import load_params

    raw = load_params(ROOT / "params.yaml", use_env=False).model_dump(mode="json", by_alias=True)
    raw["data"].update(
        path=str(SHARED / "data" / "cifar10-jpeg.tar.gz"),
        max_per_class=per_class,
        validation_fraction=0.2,
    )
    raw["model"]["weights"] = str(
        SHARED / "weights" / "mobilenet_v2_1.0_imagenet_no_top.weights.h5"
    )
    raw["train"]["ladder"] = LADDER
    raw["evaluate"].update(bootstrap_samples=200, latency_runs=5, gallery_size=12)
    raw["gate"].update(
        min_accuracy=0.3, min_macro_f1=0.2, min_class_recall=0.0, max_latency_p95_ms=2000
    )
    raw["registry"]["tracking_uri"] = f"sqlite:///{work / runner / 'tracking' / 'mlflow.db'}"
    return Params.model_validate(raw)


def pipeline_runs(work: Path, per_class: int) -> Params:
    for runner in ("subprocess", "docker"):
        params = subset_params(work, per_class, runner)
        run = run_local(params, ROOT, work / runner / "run", work / runner / "cache", runner=runner)
        assert run.succeeded, run.error
        per_task = (
            f", {len(run.containers)} containers, "
            f"{statistics.mean(c.seconds for c in run.containers):.1f} s each"
            if run.containers
            else ""
        )
        print(f"pipeline, {runner} runner: {run.seconds:.0f} s{per_task}", flush=True)
    return params


def timed(action, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def container_start(client, image: str) -> None:
    bare = timed(lambda: client.containers.run(image, ["true"], remove=True), 5)
    tf = timed(
        lambda: client.containers.run(
            image,
            ["python3", "-c", "import tensorflow, keras, image_finetune.steps.train_rung"],
            remove=True,
        ),
        3,
    )
    print(f"container start: {bare:.2f} s (true), {tf:.1f} s (importing TensorFlow and a step)")


def serving(client, image: str, params: Params, work: Path) -> None:
    token = secrets.token_hex(16)
    (work / "secret").mkdir()
    (work / "secret" / "token").write_text(token)
    (work / "secret" / "token").chmod(0o444)
    registry = params.registry
    start = time.perf_counter()
    container = start_server_container(
        client,
        image,
        {
            "IMAGE_FINETUNE_MODEL_NAME": registry.model_name,
            "MLFLOW_TRACKING_URI": registry.tracking_uri,
        },
        work / "secret",
        [Mount(tracking_folder(registry.tracking_uri), writable=True)],
        port=18080,
    )
    try:
        while True:
            try:
                if httpx.get("http://127.0.0.1:18080/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        ready = time.perf_counter() - start
        image_bytes = next((SHARED / "weights" / "samples").glob("*.png")).read_bytes()
        latencies = []
        for _ in range(21):
            begin = time.perf_counter()
            response = httpx.post(
                "http://127.0.0.1:18080/predict",
                content=image_bytes,
                headers={"content-type": "image/png", "authorization": f"Bearer {token}"},
                timeout=60,
            )
            response.raise_for_status()
            latencies.append((time.perf_counter() - begin) * 1000)
        later = sorted(latencies[1:])
        print(
            f"serving container: ready {ready:.1f} s after docker run, first request "
            f"{latencies[0]:.0f} ms, then p50 {statistics.median(later):.1f} ms, "
            f"p95 {later[int(0.95 * len(later)) - 1]:.1f} ms"
        )
    finally:
        container.remove(force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=30)
    args = parser.parse_args()
    client = docker.from_env()
    image = Deployment().cpu_image
    size = client.images.get(image).attrs["Size"] / 1e9
    print(f"image {image}: {size:.2f} GB")
    work = Path(tempfile.mkdtemp(prefix="bench-containers-"))
    work.chmod(0o755)
    try:
        params = pipeline_runs(work, args.per_class)
        container_start(client, image)
        serving(client, image, params, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
