"""Benchmark: what slow and greedy clients cost the HTTP service, measured from outside on a
real server process (the figures in the README's reliability section).

Registers ``--model`` (or the default profile's architecture, as bench/serve_load.py does)
in a throwaway sqlite store, starts `image-finetune serve` at its defaults from an empty
working directory, and measures:

- memory: resident memory before, at the peak of, and 5 s after 64 concurrent Open Inference
  Protocol JSON bodies of 16 MiB each (UINT8 data with the wrong count: parsed, then 400);
- decoding: the server's CPU seconds for two concurrent requests of 64 solid 4096x4096 PNGs
  (3.8 MB each), and how long a one-JPEG client sent meanwhile waits;
- slow headers: 150 sockets (over the default limit of 128 requests) sending a header line
  a second; the share of /readyz polls (10 a second for 12 s) that did not get 200, and how
  many sockets the server had cut by then;
- oversized heads: the status and CPU seconds for a 16 MiB header and a 32 MiB URL.

Runs whichever image_finetune is first on PYTHONPATH, so the same script measures two
versions of the server. Usage: python bench/serve_hostile.py [--model path.keras]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (bench/harness.py: what the benchmarks share)
    ROOT,
    cifar_jpegs,
    cpu_seconds,
    default_profile_model,
    free_port,
    register,
    start,
    stop,
)

MIB = 1 << 20


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
        * 1024
    )


def oip_json_body(size: int) -> bytes:
    """An infer request of ``size`` bytes whose UINT8 data has the wrong count."""
    head = b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": ['
    count = (size - len(head) - 4) // 2
    return head + b"0," * (count - 1) + b"0]}]}"


def memory_burst(url: str, pid: int) -> None:
    body = oip_json_body(16 * MIB - 1024)
    before, peak, stop = rss_bytes(pid), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()

    def post(_) -> int:
        try:
            return httpx.post(
                f"{url}/v2/models/bench/infer",
                content=body,
                timeout=120,
                headers={"content-type": "application/json"},
            ).status_code
        except httpx.HTTPError:
            return 0

    start_time = time.perf_counter()
    with ThreadPoolExecutor(64) as pool:
        codes = list(pool.map(post, range(64)))
    took = time.perf_counter() - start_time
    time.sleep(5)
    stop.set()
    sampler.join()
    counts = {code: codes.count(code) for code in sorted(set(codes))}
    print(
        f"memory: 64 x 16 MiB OIP JSON bodies in {took:.1f} s, statuses {counts}; RSS "
        f"before {before / MIB:.0f} MiB, peak {peak[0] / MIB:.0f} MiB, 5 s after "
        f"{rss_bytes(pid) / MIB:.0f} MiB"
    )


def solid_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4096, 4096, 3), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_amplification(url: str, pid: int) -> None:
    heavy = [("files", (f"{i}.png", solid_png(), "image/png")) for i in range(64)]
    jpeg = cifar_jpegs(1)[0]
    cpu_before, results = cpu_seconds(pid), {}

    def post(key: str, **arguments) -> None:
        start_time = time.perf_counter()
        response = httpx.post(f"{url}/predict", timeout=300, **arguments)
        results[key] = (response.status_code, time.perf_counter() - start_time)

    threads = [
        threading.Thread(target=post, args=(f"heavy{i}",), kwargs={"files": heavy})
        for i in range(2)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    post("jpeg", content=jpeg, headers={"content-type": "image/jpeg"})
    for thread in threads:
        thread.join()
    print(
        f"decoding: 2 x 64 solid 4096x4096 PNGs -> {results['heavy0'][0]}, "
        f"{results['heavy1'][0]} in {max(results['heavy0'][1], results['heavy1'][1]):.1f} s; "
        f"server CPU {cpu_seconds(pid) - cpu_before:.1f} s; one JPEG sent meanwhile: "
        f"{results['jpeg'][0]} after {results['jpeg'][1]:.2f} s"
    )


def slow_headers(url: str, port: int, count: int = 150, seconds: float = 12) -> None:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        sockets.append(sock)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(1.0):
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow: y\r\n")

    dripper = threading.Thread(target=trickle)
    dripper.start()
    polls, failed = 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        polls += 1
        try:
            failed += httpx.get(f"{url}/readyz", timeout=2).status_code != 200
        except httpx.HTTPError:
            failed += 1
        time.sleep(0.1)
    cut = sum(was_cut(sock) for sock in sockets)
    stop.set()
    dripper.join()
    for sock in sockets:
        sock.close()
    print(
        f"slow headers: {count} sockets, one header line a second: {failed} of {polls} "
        f"/readyz polls in {seconds:.0f} s not 200; {cut} sockets cut by then"
    )


def was_cut(sock: socket.socket) -> bool:
    """Whether the server has answered or closed the socket."""
    sock.setblocking(False)
    try:
        sock.recv(64)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def oversized_heads(port: int, pid: int) -> None:
    for label, request in [
        (
            "16 MiB header",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (16 * MIB) + b"\r\n\r\n",
        ),
        ("32 MiB URL", b"GET /healthz?" + b"a" * (32 * MIB) + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]:
        before = cpu_seconds(pid)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(request)
            try:
                status = sock.recv(64).split(b"\r\n")[0].decode()
            except OSError as exc:
                status = f"({exc.strerror})"
        time.sleep(0.5)
        print(f"{label}: {status}; server CPU {cpu_seconds(pid) - before:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models/selected/model.keras")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        model = (
            args.model if args.model.exists() else default_profile_model(Path(work) / "model.keras")
        )
        uri = f"sqlite:///{work}/mlflow.db"
        register(model, uri, "bench")
        empty = Path(work) / "empty"
        empty.mkdir()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": uri,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "IMAGE_FINETUNE_MODEL_NAME": "bench",
        }
        server = start(
            [sys.executable, "-m", "image_finetune.cli", "serve", "--port", str(port)],
            env,
            f"{url}/readyz",
            str(empty),
        )
        try:
            print(f"server code: {json.dumps(os.environ.get('PYTHONPATH', '(installed)'))}")
            httpx.post(
                f"{url}/predict",
                content=cifar_jpegs(1)[0],
                timeout=60,
                headers={"content-type": "image/jpeg"},
            )
            memory_burst(url, server.pid)
            decode_amplification(url, server.pid)
            slow_headers(url, port)
            oversized_heads(port, server.pid)
        finally:
            stop(server)


if __name__ == "__main__":
    main()
