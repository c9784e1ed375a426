"""Sanity check of serving on each engine (bench/engines.py is the full side-by-side): for a
registered model that has an engine folder, `image-finetune serve` is started once per
configuration from an empty folder and timed from process start to /readyz 200 (cold
start), then `hey` sends one 32x32 CIFAR-10 JPEG per request to /predict at concurrency 16.
Configurations: Keras (IMAGE_FINETUNE_ENGINE=tensorflow) and the default engine (auto), each
with drift monitoring on and off (on: the engine's embedding is projected per answer).

Usage: python bench/serve_engines.py --tracking-uri URI --model-name NAME [--seconds 10]
       [--rounds 1]
Needs `hey` (apt-get install hey) and the real CIFAR-10 JPEGs in ../shared.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMAGE_FINETUNE_SHARED", ROOT.parent / "shared"))
CONFIGURATIONS = [("tensorflow", "on"), ("auto", "on"), ("tensorflow", "off"), ("auto", "off")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_jpeg() -> bytes:
    with tarfile.open(SHARED / "data" / "cifar10-jpeg.tar.gz") as archive:
        for member in archive:
            if member.isfile() and member.name.startswith("test/"):
                return archive.extractfile(member).read()
    raise SystemExit("no test JPEG in the shared archive")


def cold_start(env: dict, port: int, workdir: str) -> tuple[subprocess.Popen, float, dict]:
    """The server process and its seconds from start to /readyz 200, and its /metadata."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "image_finetune.cli", "serve", "--port",
                                str(port)], env=env, cwd=workdir, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode})")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                seconds = time.perf_counter() - start
                return process, seconds, httpx.get(f"http://127.0.0.1:{port}/metadata").json()
        except httpx.TransportError:
            pass
        time.sleep(0.05)


def hey(port: int, jpeg: Path, seconds: float) -> dict[str, float]:
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", "16", "-m", "POST", "-T",
                          "image/jpeg", "-D", str(jpeg), f"http://127.0.0.1:{port}/predict"],
                         capture_output=True, text=True, check=True).stdout
    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for share in ("50", "99"):
        found = re.search(rf"{share}% in ([\d.]+) secs", out)
        figures[f"p{share}_ms"] = float(found.group(1)) * 1000 if found else float("nan")
    figures["errors"] = len(re.findall(r"\[(?!200)\d{3}\]", out))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    print(f"{'engine':<11} {'precision':<9} {'monitor':<7} {'ready s':>8} {'req/s':>8} "
          f"{'p50 ms':>8} {'p99 ms':>8}")
    with tempfile.TemporaryDirectory() as workdir:
        jpeg = Path(workdir) / "image.jpg"
        jpeg.write_bytes(one_jpeg())
        for _ in range(args.rounds):
            for engine, monitor in CONFIGURATIONS:
                port = free_port()
                env = {k: v for k, v in os.environ.items()
                       if not k.startswith(("IMAGE_FINETUNE_", "MLFLOW_"))}
                env.update(MLFLOW_TRACKING_URI=args.tracking_uri, TF_CPP_MIN_LOG_LEVEL="2",
                           IMAGE_FINETUNE_MODEL_NAME=args.model_name,
                           IMAGE_FINETUNE_ENGINE=engine, IMAGE_FINETUNE_MONITOR=monitor)
                process, ready, metadata = cold_start(env, port, workdir)
                try:
                    figures = hey(port, jpeg, args.seconds)
                finally:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=60)
                print(f"{metadata['engine']:<11} {metadata['precision']:<9} {monitor:<7} "
                      f"{ready:>8.1f} {figures['rps']:>8.1f} {figures['p50_ms']:>8.1f} "
                      f"{figures['p99_ms']:>8.1f}" + (f"  ({figures['errors']} non-200)"
                                                      if figures["errors"] else ""))


if __name__ == "__main__":
    main()
