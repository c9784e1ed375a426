"""Benchmark: the fast inference engines side by side with Keras/TensorFlow, in one run on one
machine (issue 26's table). Prints, and writes as JSON and Markdown
(``--out``/engines-<date>.json|md):

- the machine: CPU model, cores, memory, the instruction-set features the engines use
  (avx2, fma, avx512f, avx512_vnni, avx512_bf16, amx), Python and engine versions, load;
- the model alone: Keras/TensorFlow vs ONNX Runtime vs OpenVINO, fp32 and int8 (calibrated
  on real training images of every class), images/s at batch 1, 8, 32 and 256: the best of
  ``rounds`` medians of timed calls, warm-up excluded; beside it each variant's accuracy on
  real test images, top-1 disagreements with Keras and the largest probability difference;
- the frozen stem (the feature cache's embedding up to ``model.cache_boundary``): images/s
  on Keras and on each engine, and the largest feature difference from Keras;
- HTTP: the server (``image-finetune serve`` from an empty folder, its version registered in
  a throwaway sqlite store with its engine folder) on Keras and on the default engine, fp32
  and int8 where the int8 variant passes the accuracy rule; each driven by ``hey`` (else an
  asyncio client) at concurrency 1, 16 and 64 with one JPEG and 32 JPEGs per request, on
  ``/predict`` and on the Open Inference Protocol infer route (BYTES, binary extension):
  req/s, images/s, p50/p95/p99, and /healthz's p99 while it is loaded (probed 20 times a
  second); and each server's cold start: process start to /readyz 200;
- image sizes: ``docker image ls`` of the full and the slim serving image (n/a if not built).

``--model`` is a .keras classifier (default models/selected/model.keras; without one, the
default profile's architecture with ImageNet weights and an untrained head: the same compute,
meaningless accuracies). ``--quick`` runs every part on a tiny classifier with short loads
(the test that keeps this script working); ``--sections`` runs a subset.

Usage: python bench/engines.py [--model PATH] [--out bench/results] [--quick]
       [--sections machine,model,embed,http,images] [--seconds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (bench/harness.py: what the benchmarks share)
    BIN,
    MOBILENET_WEIGHTS,
    ROOT,
    Payload,
    cifar_jpegs,
    cpu_seconds,
    default_client,
    default_profile_model,
    free_port,
    measure,
    mlflow_server,
    multipart,
    probe_health,
    register,
    start,
    stop,
)
from harness import cifar_per_class as read_per_class  # noqa: E402

SECTIONS = ("machine", "model", "embed", "http", "cold", "images")
ISA_FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
# {name: its distributions, the first installed counts} (TensorFlow ships as tensorflow-cpu)
PACKAGES = {
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "keras": ("keras",),
    "onnxruntime": ("onnxruntime",),
    "openvino": ("openvino",),
    "nncf": ("nncf",),
    "tf2onnx": ("tf2onnx",),
    "onnx": ("onnx",),
}
MODEL_NAME = "bench"
FULL_IMAGE = (
    os.environ.get("IMAGE_FINETUNE_IMAGE", "ghcr.io/image-finetune/image-finetune:0.1.0") + "-cpu"
)
SLIM_IMAGE = (
    os.environ.get("IMAGE_FINETUNE_IMAGE", "ghcr.io/image-finetune/image-finetune:0.1.0") + "-serve"
)


@dataclass(frozen=True)
class Plan:
    """How much of each measurement a run makes."""

    batches: tuple[int, ...]
    rounds: int  # timed rounds per batch size: the best round's median counts
    round_images: int  # images per round at least (calls: round_images / batch, 3 or more)
    calibration_per_class: int  # int8 calibration: training images of every class
    test_per_class: int  # accuracy and agreement: test images of every class
    embed_images: int
    embed_batch: int
    concurrency: tuple[int, ...]
    seconds: float  # per HTTP measurement
    many: int  # JPEGs in the batched requests
    serve_int8: bool  # a third server at int8, where it passes the accuracy rule
    cold_registries: tuple[str, ...]  # cold starts against: file (a sqlite store), http
    cold_rounds: int  # starts of each server per registry, alternating


FULL = Plan(
    batches=(1, 8, 32, 256),
    rounds=3,
    round_images=64,
    calibration_per_class=30,
    test_per_class=300,
    embed_images=1024,
    embed_batch=256,
    concurrency=(1, 16, 64),
    seconds=5.0,
    many=32,
    serve_int8=True,
    cold_registries=("file", "http"),
    cold_rounds=3,
)
QUICK = Plan(
    batches=(1, 8),
    rounds=2,
    round_images=8,
    calibration_per_class=2,
    test_per_class=2,
    embed_images=32,
    embed_batch=16,
    concurrency=(1, 16),
    seconds=0.3,
    many=32,
    serve_int8=False,
    cold_registries=("http",),
    cold_rounds=1,
)


@functools.cache
def cifar_per_class(split: str, per_class: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """harness.cifar_per_class, read once per run (each read scans the whole archive)."""
    return read_per_class(split, per_class)


# -- the machine -----------------------------------------------------------------------------


def machine() -> dict:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    fields = {
        key.strip(): value.strip()
        for key, value in (line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    }
    flags = set(fields.get("flags", "").split())
    memory = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        "0",
    )
    versions = {}
    for package, distributions in PACKAGES.items():
        for distribution in distributions:
            with contextlib.suppress(metadata.PackageNotFoundError):
                versions[package] = metadata.version(distribution)
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": fields.get("model name", "?"),
        "cores": os.cpu_count(),
        "memory_gib": round(int(memory) / 2**20, 1),
        "kernel": platform.release(),
        "isa": {feature: feature in flags for feature in ISA_FEATURES},
        "python": platform.python_version(),
        "versions": versions,
        "load_before": round(os.getloadavg()[0], 2),
    }


# -- the model alone -------------------------------------------------------------------------


def images_per_second(predict, images: np.ndarray, batch: int, plan: Plan) -> tuple[float, float]:
    """``batch`` images per call: three warm-up calls, then ``plan.rounds`` rounds of calls.
    (images/s of the best round's median call, images per CPU-second of this process in its
    most frugal round): the second holds when neighbours load the machine, the first not."""
    batch_images = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
    for _ in range(3):
        predict(batch_images)
    calls = max(3, -(-plan.round_images // batch))
    medians, cpu = [], []
    for _ in range(plan.rounds):
        times, cpu_begin = [], time.process_time()
        for _ in range(calls):
            begin = time.perf_counter()
            predict(batch_images)
            times.append(time.perf_counter() - begin)
        cpu.append(time.process_time() - cpu_begin)
        medians.append(float(np.median(times)))
    return batch / min(medians), batch * calls / max(min(cpu), 1e-9)


def in_batches(predict, images: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate(
        [
            np.asarray(predict(images[i : i + batch]), dtype=np.float32)
            for i in range(0, len(images), batch)
        ]
    )


def export(classifier, folder: Path, plan: Plan) -> dict:
    """The classifier's engine folder: fp32 on both engines, int8 calibrated on real training
    images of every class. Seconds each took."""
    from image_finetune.engines import FAST_ENGINES, convert_keras, quantize_int8

    seconds = {}
    begin = time.perf_counter()
    convert_keras(classifier, folder)
    seconds["convert (both engines)"] = time.perf_counter() - begin
    calibration, _, _ = cifar_per_class("train", plan.calibration_per_class)
    for engine in FAST_ENGINES:
        begin = time.perf_counter()
        quantize_int8(folder, engine, calibration)
        seconds[f"int8 {engine}"] = time.perf_counter() - begin
    return {name: round(value, 1) for name, value in seconds.items()}


def predictors(classifier, folder: Path) -> list:
    from image_finetune.engines import FAST_ENGINES, PRECISIONS, keras_predictor, open_predictor

    return [keras_predictor(classifier)] + [
        open_predictor(folder, engine, precision)
        for engine in FAST_ENGINES
        for precision in PRECISIONS
    ]


def model_alone(classifier, folder: Path, plan: Plan) -> dict:
    """Throughput per engine, precision and batch size; each variant's accuracy and agreement
    with Keras on real test images; and the int8 accuracy rule (engines.int8_verdict, with
    params.yaml's defaults) for each fast engine, on those images."""
    from image_finetune.config import Params
    from image_finetune.engines import agreement, int8_verdict
    from image_finetune.stats import per_image_correct

    images, labels, _ = cifar_per_class("test", plan.test_per_class)
    rows, correct, reference = [], {}, None
    for predictor in predictors(classifier, folder):
        probabilities = in_batches(predictor.predict_on_batch, images)
        reference = probabilities if reference is None else reference
        correct[predictor.engine, predictor.precision] = per_image_correct(probabilities, labels)
        match = agreement(reference, probabilities)
        row = {
            "engine": predictor.engine,
            "precision": predictor.precision,
            "accuracy": float(np.mean(probabilities.argmax(1) == labels)),
            "disagreements": match["disagreements"],
            "max_abs_difference": match["max_abs_probability_difference"],
            "images_per_second": {},
        }
        row["images_per_cpu_second"] = {}
        for batch in plan.batches:
            wall, cpu = images_per_second(predictor.predict_on_batch, images, batch, plan)
            row["images_per_second"][batch] = round(wall, 1)
            row["images_per_cpu_second"][batch] = round(cpu, 1)
        print(
            f"  model {row['engine']:<11} {row['precision']:<4} {row['images_per_second']}",
            flush=True,
        )
        rows.append(row)
    defaults = Params()
    rules = [
        {
            "engine": engine,
            **int8_verdict(
                correct[engine, "fp32"],
                correct[engine, "int8"],
                defaults.engine.max_int8_loss_points,
                defaults.gate.significance,
            ),
        }
        for engine in sorted({e for e, _ in correct} - {"tensorflow"})
    ]
    return {"test_images": len(images), "rows": rows, "int8_rule": rules}


# -- the frozen stem -------------------------------------------------------------------------


def embed(classifier, boundary: str, workdir: Path, plan: Plan) -> dict:
    """Images/s of the feature cache's stem on Keras and on each fast engine, batch
    ``plan.embed_batch``, and the largest feature difference from Keras."""
    from image_finetune.engines import ENGINES, compile_keras
    from image_finetune.training.features import stem_model
    from image_finetune.training.model import classifier_parts

    stem = stem_model(classifier_parts(classifier), boundary)
    images, _, _ = cifar_per_class("train", max(1, plan.embed_images // 10))
    rows, reference = [], None
    for engine in ENGINES:
        predictor = compile_keras(stem, engine, workdir / engine)
        # warm-up over every batch shape the timed passes see (the last batch may be short)
        features = in_batches(predictor.predict_on_batch, images, plan.embed_batch)
        if reference is None:
            reference = features
        seconds = []
        for _ in range(max(1, plan.rounds // 2)):
            begin = time.perf_counter()
            in_batches(predictor.predict_on_batch, images, plan.embed_batch)
            seconds.append(time.perf_counter() - begin)
        rows.append(
            {
                "engine": engine,
                "images_per_second": round(len(images) / min(seconds), 1),
                "max_abs_difference": float(np.max(np.abs(features - reference))),
                "max_abs_feature": float(np.max(np.abs(reference))),
            }
        )
        print(f"  embed {engine:<11} {rows[-1]['images_per_second']:.0f} images/s", flush=True)
    return {
        "boundary": boundary,
        "batch": plan.embed_batch,
        "images": len(images),
        "output_shape": list(reference.shape[1:]),
        "rows": rows,
    }


# -- HTTP ------------------------------------------------------------------------------------


def engine_manifest(folder: Path, classifier, class_names: list[str], int8: dict | None) -> dict:
    """engine.json as the export-engine step writes it, from the bench's own measurements
    (the step needs an ingested data folder): the default engine, serving fp32, and the int8
    verdict the server checks before it serves int8."""
    from image_finetune.engines import (
        DEFAULT_ENGINE,
        EMBEDDING,
        ENGINE_MANIFEST,
        PROBABILITIES,
        file_hashes,
    )

    manifest = {
        "default_engine": DEFAULT_ENGINE,
        "serving_precision": "fp32",
        "input_shape": [int(d) for d in classifier.input_shape[1:]],
        "class_names": class_names,
        "outputs": [PROBABILITIES, EMBEDDING],
        "files": file_hashes(folder),
        "agreement": {},
        "int8": int8,
    }
    (folder / ENGINE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def oip_bytes(jpegs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """An OIP infer request of BYTES JPEGs with the binary tensor data extension."""
    data = b"".join(struct.pack("<I", len(j)) + j for j in jpegs)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [len(jpegs)],
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    ).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


def http_payloads(port: int, many: int) -> list[Payload]:
    jpegs = cifar_jpegs(many)
    form_type, form = multipart(jpegs)
    one_oip, one_headers = oip_bytes(jpegs[:1])
    many_oip, many_headers = oip_bytes(jpegs)
    infer = f"/v2/models/{MODEL_NAME}/infer"
    octets = "application/octet-stream"
    return [
        Payload("/predict, 1 JPEG", port, "/predict", "image/jpeg", jpegs[0], 1),
        Payload(f"/predict, {many} JPEGs", port, "/predict", form_type, form, many),
        Payload("OIP infer, 1 JPEG", port, infer, octets, one_oip, 1, one_headers),
        Payload(f"OIP infer, {many} JPEGs", port, infer, octets, many_oip, many, many_headers),
    ]


def serve(env: dict, cwd: Path) -> tuple[subprocess.Popen, int, int, float]:
    """A server process: (process, port, probe port, seconds from its start to /readyz
    200)."""
    port, probe_port = free_port(), free_port()
    begin = time.perf_counter()
    process = start(
        [
            str(BIN / "image-finetune"),
            "serve",
            "--port",
            str(port),
            "--probe-port",
            str(probe_port),
        ],
        env,
        f"http://127.0.0.1:{port}/readyz",
        str(cwd),
        poll_seconds=0.05,
    )
    return process, port, probe_port, time.perf_counter() - begin


def quantile(milliseconds: float) -> float | None:
    """A latency quantile; None where the client had too few answers to give it (hey: a
    quantile q needs 100 / (100 - q) answers, 100 for p99)."""
    return round(milliseconds, 1) if milliseconds else None


def p99(latencies: list[float]) -> float | None:
    return round(float(np.percentile(latencies, 99)), 1) if latencies else None


def load_table(port: int, probe_port: int, pid: int, plan: Plan, client: str) -> list[dict]:
    rows = []
    for payload in http_payloads(port, plan.many):
        measure(payload, 2, min(1.0, plan.seconds), client)  # warm-up: connections, batches
        for concurrency in plan.concurrency:
            health, probes, done = [], [], threading.Event()
            probers = [
                threading.Thread(target=probe_health, args=(port, done, health)),
                threading.Thread(target=probe_health, args=(probe_port, done, probes, True)),
            ]
            for prober in probers:
                prober.start()
            cpu_before = cpu_seconds(pid)
            figures = measure(payload, concurrency, plan.seconds, client)
            server_cpu = cpu_seconds(pid) - cpu_before
            done.set()
            for prober in probers:
                prober.join()
            rows.append(
                {
                    "payload": payload.label,
                    "concurrency": concurrency,
                    "requests_per_second": round(figures.requests_per_second, 1),
                    "images_per_second": round(figures.ok_per_second * payload.images, 1),
                    "p50_ms": quantile(figures.p50),
                    "p95_ms": quantile(figures.p95),
                    "p99_ms": quantile(figures.p99),
                    "not_200": figures.errors,
                    "not_200_statuses": figures.statuses,
                    "server_cpu_ms_per_request": round(
                        1000 * server_cpu / max(figures.requests, 1), 2
                    ),
                    "healthz_p99_ms": p99(health),
                    "probe_port_healthz_p99_ms": p99(probes),
                }
            )
            print(
                f"  http {payload.label:<22} c{concurrency:<3} "
                f"{figures.requests_per_second:>7.1f} req/s p50 {rows[-1]['p50_ms']} ms "
                f"p99 {rows[-1]['p99_ms']} ms",
                flush=True,
            )
    return rows


def http(
    model_path: Path, folder: Path, work: Path, plan: Plan, client: str, int8_servable: bool
) -> dict:
    """Each server configuration in turn (never two at once: they share the cores)."""
    from image_finetune.engines import DEFAULT_ENGINE

    uri = f"sqlite:///{work}/mlflow.db"
    register(model_path, uri, MODEL_NAME, {"engine": folder})
    empty = work / "empty"
    empty.mkdir()
    base = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "IMAGE_FINETUNE_MODEL_NAME": MODEL_NAME,
    }
    configurations = [("tensorflow", "fp32"), (DEFAULT_ENGINE, "fp32")]
    if int8_servable and plan.serve_int8:
        configurations.append((DEFAULT_ENGINE, "int8"))
    servers = []
    for engine, precision in configurations:
        env = {**base, "IMAGE_FINETUNE_ENGINE": engine, "IMAGE_FINETUNE_PRECISION": precision}
        process, port, probe_port, cold = serve(env, empty)
        try:
            metadata_ = httpx.get(f"http://127.0.0.1:{port}/metadata", timeout=10).json()
            served = (metadata_.get("engine", "tensorflow"), metadata_.get("precision", "fp32"))
            print(
                f"  server on {served[0]} {served[1]}: ready {cold:.1f} s after start", flush=True
            )
            servers.append(
                {
                    "engine": served[0],
                    "precision": served[1],
                    "asked": f"{engine} {precision}",
                    "cold_start_s": round(cold, 2),
                    "rows": load_table(port, probe_port, process.pid, plan, client),
                }
            )
        finally:
            stop(process)
    return {"client": client, "seconds": plan.seconds, "servers": servers}


# -- cold start ------------------------------------------------------------------------------


@contextlib.contextmanager
def registry_at(kind: str, model_path: Path, folder: Path, work: Path):
    """The classifier and its engine folder registered as the champion: in a sqlite store
    (``file``) or behind an MLflow tracking server (``http``, how a Deployment reaches its
    registry); yields the tracking URI."""
    work.mkdir(parents=True)
    if kind == "file":
        uri = f"sqlite:///{work}/mlflow.db"
        register(model_path, uri, MODEL_NAME, {"engine": folder})
        yield uri
        return
    with mlflow_server(work / "server") as uri:
        register(model_path, uri, MODEL_NAME, {"engine": folder})
        yield uri


def cold_starts(model_path: Path, folder: Path, work: Path, plan: Plan) -> dict:
    """Process start to /readyz 200 for the Keras server and the engine's fp32 server,
    started in turn ``cold_rounds`` times against each registry: their medians."""
    from image_finetune.engines import DEFAULT_ENGINE

    rows = []
    empty = work / "empty"
    empty.mkdir(parents=True)
    for kind in plan.cold_registries:
        with registry_at(kind, model_path, folder, work / kind) as uri:
            base = {
                **os.environ,
                "MLFLOW_TRACKING_URI": uri,
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "IMAGE_FINETUNE_MODEL_NAME": MODEL_NAME,
                "IMAGE_FINETUNE_PRECISION": "fp32",
            }
            seconds: dict[str, list[float]] = {"tensorflow": [], DEFAULT_ENGINE: []}
            for _ in range(plan.cold_rounds):
                for engine, starts in seconds.items():
                    process, _, _, cold = serve({**base, "IMAGE_FINETUNE_ENGINE": engine}, empty)
                    stop(process)
                    starts.append(round(cold, 2))
            keras, fast = (float(np.median(seconds[e])) for e in ("tensorflow", DEFAULT_ENGINE))
            rows.append(
                {
                    "registry": kind,
                    "engine": DEFAULT_ENGINE,
                    "keras_s": seconds["tensorflow"],
                    "engine_s": seconds[DEFAULT_ENGINE],
                    "keras_median_s": round(keras, 2),
                    "engine_median_s": round(fast, 2),
                    "ratio": round(fast / keras, 3),
                }
            )
            print(f"  cold start, {kind} registry: {rows[-1]}", flush=True)
    return {"rounds": plan.cold_rounds, "rows": rows}


# -- image sizes -----------------------------------------------------------------------------


def image_sizes() -> dict:
    """The serving images' sizes as ``docker image ls`` gives them (and in bytes, from
    ``docker image inspect``); n/a where not built or Docker is not reachable."""
    sizes = {}
    for kind, tag in (("full", FULL_IMAGE), ("slim", SLIM_IMAGE)):
        listed = docker("image", "ls", "--format", "{{.Size}}", tag).split()
        inspected = docker("image", "inspect", "--format", "{{.Size}}", tag).strip()
        sizes[kind] = {
            "image": tag,
            "size": listed[0] if listed else "n/a",
            "bytes": int(inspected) if inspected.isdigit() else None,
        }
    return sizes


def docker(*arguments: str) -> str:
    """A docker command's output; empty where it fails."""
    try:
        done = subprocess.run(["docker", *arguments], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


# -- the report ------------------------------------------------------------------------------


def http_row(server: dict, payload: str, concurrency: int) -> dict | None:
    return next(
        (r for r in server["rows"] if r["payload"] == payload and r["concurrency"] == concurrency),
        None,
    )


def ratio_target(label: str, value: float | None, limit: float, at_least: bool) -> tuple:
    if value is None:
        return label, "n/a", None
    return label, f"{value:.2f}x", value >= limit if at_least else value <= limit


def server_targets(keras_server: dict, engine_server: dict) -> list[tuple]:
    """The server's targets for one engine server against the Keras one."""
    name = f"{engine_server['engine']} {engine_server['precision']}"
    base, fast = (http_row(s, "/predict, 1 JPEG", 16) for s in (keras_server, engine_server))
    found = [
        ratio_target(
            f"/predict 1 JPEG c16 on {name} >= 2x Keras's req/s",
            fast["requests_per_second"] / base["requests_per_second"],
            2,
            True,
        )
    ]
    base, fast = (http_row(s, "/predict, 1 JPEG", 1) for s in (keras_server, engine_server))
    found.append(
        ratio_target(
            f"/predict 1 JPEG c1 median on {name} <= 0.5x Keras's",
            fast["p50_ms"] / base["p50_ms"] if fast["p50_ms"] and base["p50_ms"] else None,
            0.5,
            False,
        )
    )
    # The kubelet probes the probe port (infra/k8s/base/serving.yaml); the shared port's
    # figure is reported beside it.
    busy_row = http_row(engine_server, "/predict, 1 JPEG", 16)
    busy = busy_row.get("probe_port_healthz_p99_ms")
    worst = max((r.get("probe_port_healthz_p99_ms") or 0) for r in engine_server["rows"])
    found.append(
        (
            f"/healthz p99 under load < 5 ms ({name} server, probe port)",
            f"{busy} ms at /predict 1 JPEG c16 ({busy_row['healthz_p99_ms']} ms on the "
            f"application's port); {worst} ms at worst",
            busy is not None and busy < 5,
        )
    )
    found.append(
        ratio_target(
            f"cold start to ready on {name} <= 0.25x Keras server's (one start each, sqlite store)",
            engine_server["cold_start_s"] / keras_server["cold_start_s"],
            0.25,
            False,
        )
    )
    return found


def cold_start_targets(cold: dict) -> list[tuple[str, str, bool | None]]:
    return [
        ratio_target(
            f"cold start to ready on {row['engine']} <= 0.25x Keras server's (median of "
            f"{cold['rounds']}, {row['registry']} registry)",
            row["ratio"],
            0.25,
            False,
        )
        for row in cold["rows"]
    ]


def targets(report: dict) -> list[tuple[str, str, bool | None]]:
    """Issue 26's targets, each as (target, measured, met): ratios within this run."""
    from image_finetune.engines import DEFAULT_ENGINE

    found = []
    if alone := report.get("model_alone"):
        best = {
            (r["engine"], r["precision"]): max(r["images_per_second"].values())
            for r in alone["rows"]
        }
        keras = best["tensorflow", "fp32"]
        rule = {r["engine"]: r for r in alone["int8_rule"]}
        for engine in sorted({e for e, _ in best} - {"tensorflow"}):
            found.append(
                ratio_target(
                    f"model alone, {engine} fp32 at its best batch >= 2x Keras's best",
                    best[engine, "fp32"] / keras,
                    2,
                    True,
                )
            )
            servable = "servable" if rule[engine]["servable"] else "NOT servable by the rule"
            found.append(
                ratio_target(
                    f"model alone, {engine} int8 ({servable}) >= 3x Keras's best",
                    best[engine, "int8"] / keras,
                    3,
                    True,
                )
            )
    servers = {(s["engine"], s["precision"]): s for s in report.get("http", {}).get("servers", [])}
    keras_server = servers.get(("tensorflow", "fp32"))
    for precision in ("fp32", "int8"):
        if keras_server and (DEFAULT_ENGINE, precision) in servers:
            found += server_targets(keras_server, servers[DEFAULT_ENGINE, precision])
    if cold := report.get("cold_start"):
        found += cold_start_targets(cold)
    sizes = report.get("image_sizes", {})
    if sizes.get("full", {}).get("bytes") and sizes.get("slim", {}).get("bytes"):
        found.append(
            ratio_target(
                "slim serving image <= 0.25x the full image",
                sizes["slim"]["bytes"] / sizes["full"]["bytes"],
                0.25,
                False,
            )
        )
    return found


def listed(values: list) -> str:
    return ", ".join(map(str, values))


def markdown(report: dict) -> str:
    lines = []
    if m := report.get("machine"):
        lines += [
            f"# Inference engines side by side, {m['date']}",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux "
            f"{m['kernel']}; load average {m['load_before']} before, "
            f"{report.get('load_after', '?')} after.",
            "",
            "CPU features: "
            + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["isa"].items()),
            "",
            f"Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
            "",
        ]
    lines += [f"Model: {report['model']}", ""]
    if "export_seconds" in report:
        lines += [
            "Export (s): " + ", ".join(f"{k} {v}" for k, v in report["export_seconds"].items()),
            "",
        ]
    if alone := report.get("model_alone"):
        batches = list(alone["rows"][0]["images_per_second"])
        keras = alone["rows"][0]["images_per_second"]
        lines += [
            "## Model alone (images/s; best of the rounds' median call)",
            "",
            "| engine | precision | "
            + " | ".join(f"batch {b}" for b in batches)
            + " | best vs Keras best | accuracy | disagreements | max abs diff |",
            "|---|---|" + "---:|" * (len(batches) + 4),
        ]
        for r in alone["rows"]:
            ips = r["images_per_second"]
            ratio = max(ips.values()) / max(keras.values())
            lines.append(
                f"| {r['engine']} | {r['precision']} | "
                + " | ".join(f"{ips[b]:.0f}" for b in batches)
                + f" | {ratio:.2f}x | {r['accuracy']:.4f} | {r['disagreements']} | "
                f"{r['max_abs_difference']:.2g} |"
            )
        lines += [
            "",
            "Images per CPU-second of the benchmark process (all its threads; "
            "robust to neighbours' load, blind to how many cores an engine keeps busy):",
            "",
            "| engine | precision | " + " | ".join(f"batch {b}" for b in batches) + " |",
            "|---|---|" + "---:|" * len(batches),
        ]
        for r in alone["rows"]:
            lines.append(
                f"| {r['engine']} | {r['precision']} | "
                + " | ".join(f"{r['images_per_cpu_second'][b]:.0f}" for b in batches)
                + " |"
            )
        lines += [
            "",
            f"Accuracy and agreement with Keras on {alone['test_images']} test "
            "images (every class alike).",
            "",
        ]
        for rule in alone["int8_rule"]:
            lines.append(
                f"- int8 on {rule['engine']}: {rule['loss_points']:.2f} points lost, "
                f"McNemar p {rule['mcnemar_p_value']:.3g}: "
                f"{'servable' if rule['servable'] else 'not servable'} "
                f"({rule['reason']})"
            )
        lines.append("")
    if emb := report.get("embed"):
        lines += [
            f"## Frozen stem up to `{emb['boundary']}` (batch {emb['batch']}, "
            f"{emb['images']} images, features {emb['output_shape']})",
            "",
            "| engine | images/s | vs Keras | max abs feature diff |",
            "|---|---:|---:|---:|",
        ]
        keras = emb["rows"][0]["images_per_second"]
        for r in emb["rows"]:
            lines.append(
                f"| {r['engine']} | {r['images_per_second']:.0f} | "
                f"{r['images_per_second'] / keras:.2f}x | "
                f"{r['max_abs_difference']:.2g} (of {r['max_abs_feature']:.3g}) |"
            )
        lines.append("")
    if web := report.get("http"):
        lines += [
            f"## HTTP (client {web['client']}, {web['seconds']:g} s per cell; /healthz "
            "probed 20 times a second meanwhile on each port: the application's, on one "
            "kept connection, and the probe port's, on a new connection each time as a "
            "kubelet does)",
            "",
            "| server | cold start s | payload | conc | req/s | images/s | p50 ms | "
            "p95 ms | p99 ms | /healthz p99 ms | probe port /healthz p99 ms | "
            "server CPU ms/req | not 200 |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in web["servers"]:
            for r in s["rows"]:
                lines.append(
                    f"| {s['engine']} {s['precision']} | {s['cold_start_s']} | "
                    f"{r['payload']} | {r['concurrency']} | "
                    f"{r['requests_per_second']:.1f} | {r['images_per_second']:.0f} | "
                    f"{dash(r['p50_ms'])} | {dash(r['p95_ms'])} | {dash(r['p99_ms'])} | "
                    f"{dash(r['healthz_p99_ms'])} | "
                    f"{dash(r.get('probe_port_healthz_p99_ms'))} | "
                    f"{r['server_cpu_ms_per_request']} | {r['not_200']}"
                    f"{' (' + r['not_200_statuses'] + ')' if r['not_200'] else ''} |"
                )
        lines += [
            "",
            "-: too few answers in the cell for the quantile (hey gives p99 from "
            "100 answers on). Not 200: by status; 503 is the server's backpressure (at "
            "most max_queued_images images waiting: 64 x 32 is over the default 1024).",
            "",
        ]
    if cold := report.get("cold_start"):
        lines += [
            f"## Cold start (process start to /readyz 200; each server started "
            f"{cold['rounds']} times in turn, median)",
            "",
            "| registry | Keras server s | engine server s | engine / Keras |",
            "|---|---|---|---:|",
        ]
        for row in cold["rows"]:
            lines.append(
                f"| {row['registry']} | {row['keras_median_s']} ({listed(row['keras_s'])}) | "
                f"{row['engine']} fp32 {row['engine_median_s']} ({listed(row['engine_s'])}) | "
                f"{row['ratio']:.2f}x |"
            )
        lines += [
            "",
            "file: a sqlite store read in the server's process (MLflow's SQL store costs about "
            "1 s of imports); http: an MLflow tracking server with proxied artifacts, as the "
            "Kubernetes Deployment reaches its registry.",
            "",
        ]
    if sizes := report.get("image_sizes"):
        lines += ["## Serving images (`docker image ls`)", ""]
        lines += [f"- {kind}: `{s['image']}` {s['size']}" for kind, s in sizes.items()]
        lines.append("")
    if found := targets(report):
        lines += [
            "## Issue 26's targets (ratios within this run)",
            "",
            "| target | measured | met |",
            "|---|---|---|",
        ]
        lines += [
            f"| {label} | {value} | {'-' if met is None else 'yes' if met else 'no'} |"
            for label, value, met in found
        ]
        lines.append("")
    return "\n".join(lines)


def dash(value) -> str:
    return "-" if value is None else str(value)


# -- the run ---------------------------------------------------------------------------------


def tiny_classifier(path: Path) -> Path:
    """A small classifier built by this project's builder (32x32 uint8 in, a two-block
    convolutional backbone, the project's head): every code path, in seconds."""
    import keras

    from image_finetune.config import ModelParams
    from image_finetune.training.model import build_classifier

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="block_1")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="block_2")(x)
    backbone = keras.Model(inputs, x, name="tiny_backbone")
    build_classifier(backbone, 10, ModelParams(weights="none"), 32).model.save(path)
    return path


def classifier_file(args, work: Path) -> tuple[Path, str, str]:
    """(the .keras file, how to name it in the report, the stem's boundary)."""
    from image_finetune.config import Params

    if args.quick:
        return tiny_classifier(work / "tiny.keras"), "tiny classifier (--quick)", "block_1"
    boundary = Params().train.cache_boundary
    if args.model.exists():
        path = args.model.resolve()
        return path, str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path), boundary
    if not MOBILENET_WEIGHTS.exists():
        raise SystemExit(f"no {args.model} and no {MOBILENET_WEIGHTS} to build one from")
    return (
        default_profile_model(work / "model.keras"),
        "the default profile's architecture (ImageNet backbone, untrained head)",
        boundary,
    )


def run(args) -> dict:
    from image_finetune.inference import load_classifier

    plan = QUICK if args.quick else FULL
    if args.seconds:
        plan = Plan(**{**asdict(plan), "seconds": args.seconds})
    sections = set(args.sections.split(","))
    report: dict = {"plan": asdict(plan)}
    if "machine" in sections:
        report["machine"] = machine()
        print(json.dumps(report["machine"]), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as scratch:
        work = Path(scratch)
        model_path, report["model"], boundary = classifier_file(args, work)
        classifier = load_classifier(model_path)
        report["model"] += (
            f" ({classifier.name}, uint8 input "
            f"{'x'.join(map(str, classifier.input_shape[1:]))}, "
            f"{classifier.count_params():,} parameters)"
        )
        folder = work / "engine"
        if sections & {"model", "http", "cold"}:
            report["export_seconds"] = export(classifier, folder, plan)
        int8 = None
        if "model" in sections:
            report["model_alone"] = model_alone(classifier, folder, plan)
            from image_finetune.engines import DEFAULT_ENGINE

            int8 = next(
                r for r in report["model_alone"]["int8_rule"] if r["engine"] == DEFAULT_ENGINE
            )
        if "embed" in sections:
            report["embed"] = embed(classifier, boundary, work / "stem", plan)
        if sections & {"http", "cold"}:
            names = [str(i) for i in range(int(classifier.output_shape[-1]))]
            engine_manifest(folder, classifier, names, int8)
        if "http" in sections:
            report["http"] = http(
                model_path,
                folder,
                work / "http",
                plan,
                args.client,
                bool(int8 and int8["servable"]),
            )
        if "cold" in sections:
            report["cold_start"] = cold_starts(model_path, folder, work / "cold", plan)
    if "images" in sections:
        report["image_sizes"] = image_sizes()
    report["load_after"] = round(os.getloadavg()[0], 2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models/selected/model.keras")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="where engines-<date>.json and .md go",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tiny classifier, small batches, short loads"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument("--seconds", type=float, default=0.0, help="per HTTP measurement")
    parser.add_argument("--client", choices=("hey", "asyncio"), default=default_client())
    args = parser.parse_args()
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    report = run(args)
    text = markdown(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"engines-{datetime.date.today().isoformat()}{'-quick' if args.quick else ''}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(text + "\n")
    print(f"written: {args.out / stem}.json, .md")


if __name__ == "__main__":
    main()
