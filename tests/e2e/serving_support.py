"""What the serving tests share: starting `image-finetune serve` as a real process configured
by environment variables only (from an empty working directory, as in a container), waiting
for it, and talking to it below the HTTP client where a client would not misbehave."""

from __future__ import annotations

import io
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from tests.support import ROOT, free_port

# The shared server's limits: small, so the tests reach them with small requests.
MAX_IMAGES = 50
MAX_IMAGE_BYTES = 200_000
MAX_BODY_BYTES = 4_000_000
MAX_PIXELS = 4_000_000


def register(params, data: Path, evaluation: Path, decision: Path, model: Path, run: str):
    """Register a trained model (promoted where it beats the champion) as the pipeline does."""
    from image_finetune.steps.register import register_classifier

    return register_classifier(
        params,
        data,
        evaluation,
        decision,
        evaluation.parent / f"{run}.json",
        ROOT,
        model=model,
        pipeline_run_id=run,
    )


def register_with_profile(champion: dict, work: Path, run: str):
    """The champion, with its reference profile, registered and promoted in a registry of
    ``work``'s own: (params, the profile folder, the registration's outcome)."""
    from image_finetune.steps.profile import profile_classifier
    from image_finetune.steps.register import register_classifier

    params, _ = own_registry_params(champion, work)
    profile = work / "profile"
    profile_classifier(params, champion["data"], champion["model_path"], profile)
    outcome = register_classifier(
        params,
        champion["data"],
        champion["evaluation"],
        champion["decision"],
        work / "registration.json",
        ROOT,
        model=champion["model_path"],
        profile=profile,
        pipeline_run_id=run,
    )
    return params, profile, outcome


def own_registry_params(champion: dict, work: Path):
    """(params, params.yaml) of the serving tests' champion with the registry moved to a
    sqlite store in ``work``: a module that promotes or registers leaves the others alone."""
    import yaml

    from image_finetune.config import load_params

    settings = yaml.safe_load(champion["params_file"].read_text())
    settings["registry"]["tracking_uri"] = f"sqlite:///{work / 'mlflow.db'}"
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(settings))
    return load_params(params_file, use_env=False), params_file


def relabelled_copy(model_path: Path, out: Path) -> Path:
    """The champion with its output classes rotated by one: different weights, so every
    image gets a different label, and which version answers is plain to see."""
    from image_finetune.inference import load_classifier

    model = load_classifier(model_path)
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([np.roll(kernel, 1, axis=1), np.roll(bias, 1)])
    model.save(out)
    return out


def wait_for(
    url: str, process: subprocess.Popen, status: int = 200, timeout: float = 240
) -> httpx.Response:
    """Poll ``url`` until it answers ``status``; fail with the server's stderr if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == status:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer {status} within {timeout} s")


class Server:
    """`image-finetune serve` in a process of its own, configured by ``env`` and ``args``."""

    def __init__(
        self, env: dict[str, str], args: list[str], workdir: Path, command: list[str] | None = None
    ):
        """``command``: another installation's ``image-finetune serve`` (run without this
        checkout's PYTHONPATH), instead of this one's."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("IMAGE_FINETUNE_", "MLFLOW_"))
            and not (command and k == "PYTHONPATH")
        }
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [
                *(command or [sys.executable, "-m", "image_finetune.cli", "serve"]),
                "--port",
                str(self.port),
                *args,
            ],
            env={**base, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.ready_seconds: float | None = None  # from the process' start to /readyz 200

    def wait_ready(self) -> None:
        wait_for(f"{self.url}/readyz", self.process)
        self.ready_seconds = time.monotonic() - self.started

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return (
            int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
            * 1024
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)


def serve(env: dict[str, str], args: list[str], workdir: Path) -> Server:
    """A server that is ready."""
    server = Server(env, args, workdir)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def stream_body(
    port: int,
    path: str,
    content_type: str,
    total: int,
    prefix: bytes = b"",
    declared: int | None = None,
    chunk: int = 1 << 20,
) -> tuple[int, int]:
    """Send ``prefix`` then ``total`` zero bytes, chunked (or only a Content-Length header
    declaring ``declared`` bytes), stopping as soon as the server answers: (status, bytes
    sent by then). A well-behaved client would send everything before reading."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    framing = (
        f"Content-Length: {declared}" if declared is not None else "Transfer-Encoding: chunked"
    )
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}"
        f"\r\n{framing}\r\n\r\n".encode()
    )
    if prefix:
        sock.sendall(f"{len(prefix):x}\r\n".encode() + prefix + b"\r\n")
    piece = f"{chunk:x}\r\n".encode() + b"\0" * chunk + b"\r\n"
    sent = 0
    try:
        while sent < total and not select.select([sock], [], [], 0)[0]:
            sock.sendall(piece)
            sent += chunk
        answer = sock.recv(4096)
    finally:
        sock.close()
    return int(answer.split(b" ", 2)[1]), sent


def png(pixels: np.ndarray, **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def engine_folder(
    model_path: Path, out: Path, class_names: list[str], int8_calibration: np.ndarray | None = None
) -> Path:
    """A trained classifier's engine folder laid out as the export-engine step does, but with
    both engines (engines.convert_keras: ONNX and OpenVINO IR with probabilities and
    embedding), so a test can serve either; with calibration images, OpenVINO's int8 variant
    marked servable and served by default."""
    import json

    from image_finetune.engines import convert_keras, quantize_int8
    from image_finetune.inference import load_classifier

    convert_keras(load_classifier(model_path), out)
    int8 = {"servable": False, "reason": "not made"}
    if int8_calibration is not None:
        quantize_int8(out, "openvino", int8_calibration)
        int8 = {"engine": "openvino", "servable": True, "reason": "made for the test"}
    manifest = {
        "default_engine": "openvino",
        "serving_precision": "int8" if int8["servable"] else "fp32",
        "input_shape": [32, 32, 3],
        "class_names": class_names,
        "outputs": ["probabilities", "embedding"],
        "int8": int8,
    }
    (out / "engine.json").write_text(json.dumps(manifest))
    return out


def log_engine(tracking_uri: str, model_name: str, version: str, folder: Path) -> None:
    """Log an engine folder as ``version``'s ``engine/`` artifact (beside its model)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    run_id = client.get_model_version(model_name, version).run_id
    client.log_artifacts(run_id, str(folder), "engine")
