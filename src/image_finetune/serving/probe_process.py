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
import asyncio
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus

from image_finetune.serving.probe_answers import ProbeState, probe_answer

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.5
# Connections open at once; more are closed unanswered (a kubelet needs one or two; a flood
# of silent sockets must not hold the process's memory).
MAX_CONNECTIONS = 16
SOCKET_TIMEOUT_SECONDS = 5.0  # a client that sends nothing is dropped after this
MAX_HEAD_BYTES = 8192  # a request line and headers longer than this are dropped
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


async def answer_probe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latest: LatestState
) -> None:
    """One request on one connection: its head read within SOCKET_TIMEOUT_SECONDS (at most
    the reader's limit), answered, and the connection closed (HTTP/1.0, as a kubelet's)."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SOCKET_TIMEOUT_SECONDS)
        method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        path = target.split("?", 1)[0]
        if method != "GET":
            status, content = 405, {"detail": f"{method[:20]} is not GET"}
        else:
            status, content = probe_answer(path, latest.state, latest.stalled_for())
        body = json.dumps(content).encode()
        writer.write(
            f"HTTP/1.0 {status} {HTTPStatus(status).phrase}\r\n"
            f"Server: image-finetune-probes\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (
        TimeoutError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        ValueError,
        ConnectionError,
    ):
        pass  # silent, cut short, oversized, not HTTP or gone: closed unanswered
    finally:
        writer.close()


async def serve_probes(host: str, port: int, latest: LatestState) -> int:
    """Answer probes on one thread (a sleeper the scheduler wakes at once, where a thread per
    connection would start cold) until the server's input closes."""
    loop = asyncio.get_running_loop()
    open_connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_connections
        if open_connections >= MAX_CONNECTIONS:
            writer.close()
            return
        open_connections += 1
        try:
            await answer_probe(reader, writer, latest)
        finally:
            open_connections -= 1

    try:
        server = await asyncio.start_server(handle, host, port, limit=MAX_HEAD_BYTES)
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc.strerror}", flush=True)
        return 2
    print(f"{LISTENING}{server.sockets[0].getsockname()[1]}", flush=True)
    finished = asyncio.Event()
    threading.Thread(
        target=read_states,
        args=(latest, lambda: loop.call_soon_threadsafe(finished.set)),
        daemon=True,
    ).start()
    async with server:
        await finished.wait()
    return 0


def read_states(latest: LatestState, on_end: Callable[[], object]) -> None:
    """The server's state lines, until its end closes them; then ``on_end``."""
    for line in sys.stdin.buffer:
        try:
            latest.update(ProbeState.from_line(line))
        except ValueError:  # not the server's line: keep the last state
            continue
    on_end()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the server's probes on a port of their own")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stall-seconds", type=float, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server; its end stops us
    return asyncio.run(serve_probes(args.host, args.port, LatestState(args.stall_seconds)))


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
