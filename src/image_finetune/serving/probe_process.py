"""The probes on a port of their own, answered by a small process beside the server
(``serve --probe-port``).

Why a process. The application's probes share the event loop with every request it parses,
and a thread beside that loop shares the interpreter lock with it: under 16 concurrent
clients on 2 cores, ``/healthz``'s 99th percentile was 15 ms on the application's port and
150 ms on a thread of its own (bench/engines.py), where a kubelet should see under 5 ms.
A process of its own waits for nothing but a core.

The server feeds it its state (``ProbeState``, a JSON line on the process's standard input)
every ``HEARTBEAT_SECONDS`` from its event loop. Silence for ``stall_seconds`` means the loop
is wedged: liveness and readiness then fail. End of input means the server is gone: the
process exits, so it never answers for a server that is not there.

Run as ``python -m image_finetune.serving.probe_process --host H --port P --stall-seconds S``;
it imports nothing beyond the standard library and serving/probe_answers.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from image_finetune.serving.probe_answers import ProbeState, probe_answer

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.5
# Connections answered at once; more are closed unanswered (a kubelet needs one or two; a
# flood of sockets must not become a flood of threads).
MAX_CONNECTIONS = 16
SOCKET_TIMEOUT_SECONDS = 5.0  # a client that sends nothing is dropped after this
START_TIMEOUT_SECONDS = 30.0
LISTENING = "listening "  # the first line out: the port, or why not


# -- the probe process ------------------------------------------------------------------------


class LatestState:
    """The state last fed in, and when (this process's monotonic clock)."""

    def __init__(self, stall_seconds: float):
        self.stall_seconds = stall_seconds
        self.state = ProbeState()
        self.heard = time.monotonic()

    def update(self, state: ProbeState) -> None:
        self.state, self.heard = state, time.monotonic()

    def stalled_for(self) -> float | None:
        silent = time.monotonic() - self.heard
        return silent if silent > self.stall_seconds else None


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS at once."""

    daemon_threads = True

    def __init__(self, address, handler):
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def probe_handler(latest: LatestState) -> type[BaseHTTPRequestHandler]:
    class ProbeHandler(BaseHTTPRequestHandler):
        timeout = SOCKET_TIMEOUT_SECONDS
        server_version = "image-finetune-probes"

        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            path = self.path.split("?", 1)[0]
            status, content = probe_answer(path, latest.state, latest.stalled_for())
            body = json.dumps(content).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's name)
            pass  # a probe every few seconds would drown the server's log

    return ProbeHandler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the server's probes on a port of their own")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stall-seconds", type=float, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server; its end stops us
    latest = LatestState(args.stall_seconds)
    try:
        server = BoundedHTTPServer((args.host, args.port), probe_handler(latest))
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror}", flush=True)
        return 2
    print(f"{LISTENING}{server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    for line in sys.stdin.buffer:
        try:
            latest.update(ProbeState.from_line(line))
        except ValueError:  # not the server's line: keep the last state
            continue
    return 0  # end of input: the server is gone


# -- the server's side ------------------------------------------------------------------------


class ProbeProcess:
    """The probe process started beside the server, and fed its state."""

    def __init__(self, host: str, port: int, stall_seconds: float):
        self.command = [
            sys.executable,
            "-m",
            __name__,
            "--host",
            host,
            "--port",
            str(port),
            "--stall-seconds",
            str(stall_seconds),
        ]
        self.process: subprocess.Popen | None = None
        self.port = port
        self.lost = False

    def start(self) -> None:
        """Start it; ``wait_listening`` says whether it could listen (the server imports its
        application meanwhile, on the other core)."""
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def wait_listening(self) -> None:
        """Return once it listens; OSError (with its message) where it cannot."""
        process = self.process
        assert process and process.stdin and process.stdout  # started, with the pipes asked for
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_SECONDS)
        line = process.stdout.readline().decode(errors="replace").strip() if ready else ""
        if not line.startswith(LISTENING):
            process.kill()
            process.wait()
            self.lost = True
            raise OSError(line or "the probe process did not start")
        self.port = int(line.removeprefix(LISTENING))
        os.set_blocking(process.stdin.fileno(), False)  # never block the event loop
        log.info("probes also on port %d (a process of their own)", self.port)

    def feed(self, state: ProbeState) -> None:
        """Tell it the server's state; called from the event loop, so it never blocks (a
        full pipe drops the line: the next one follows)."""
        if self.process is None or self.lost:
            return
        try:
            os.write(self.process.stdin.fileno(), state.to_line())  # type: ignore[union-attr]
        except BlockingIOError:
            pass
        except OSError as exc:  # it has exited
            self.lost = True
            log.error(
                "the probe process on port %d is gone (%s): probes there fail", self.port, exc
            )

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.stdin.close()  # type: ignore[union-attr]
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    sys.exit(main())
