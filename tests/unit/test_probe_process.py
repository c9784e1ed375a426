"""The probes' answers, and the probe process that serves them on a port of its own: fed the
server's state, failing once that state stops coming, gone once the server is."""

from __future__ import annotations

import contextlib
import socket
import time

import httpx
import pytest

from image_finetune.serving.guard import PROBE_PATHS
from image_finetune.serving.probe_answers import PROBE_ROUTES, ProbeState, probe_answer
from image_finetune.serving.probe_process import MAX_CONNECTIONS, ProbeProcess
from tests.support import wait_until

LOADING = ProbeState(reason="registry unreachable")
READY = ProbeState(version="7")


def test_liveness_holds_while_loading_and_readiness_waits_for_a_model():
    assert probe_answer("/healthz", LOADING, None) == (200, {"status": "ok"})
    assert probe_answer("/readyz", LOADING, None) == (
        503,
        {"status": "loading", "reason": "registry unreachable"},
    )
    assert probe_answer("/v2/health/ready", LOADING, None) == (503, {"ready": False})
    assert probe_answer("/readyz", READY, None) == (200, {"status": "ready", "model_version": "7"})
    assert probe_answer("/v2/health/ready", READY, None) == (200, {"ready": True})
    assert probe_answer("/v2/health/live", READY, None) == (200, {"live": True})


def test_a_stalled_event_loop_fails_liveness_and_readiness():
    for path in PROBE_ROUTES:
        status, content = probe_answer(path, READY, 42.0)
        assert status == 503, path
        assert "42 s" in content.get("reason", "42 s"), content
    assert probe_answer("/v2/health/live", READY, 42.0) == (503, {"live": False})


def test_other_paths_are_not_probes():
    status, content = probe_answer("/predict", READY, None)
    assert status == 404 and "/predict" in content["detail"]


def test_the_application_exempts_exactly_the_probes_from_its_request_limit():
    assert set(PROBE_ROUTES) | {"/metrics"} == PROBE_PATHS


def test_a_state_line_round_trips():
    for state in (LOADING, READY, ProbeState()):
        assert ProbeState.from_line(state.to_line()) == state


def started(stall_seconds: float = 30.0):
    process = ProbeProcess("127.0.0.1", 0, stall_seconds)
    process.start()
    process.wait_listening()
    yield process
    process.stop()


probes = pytest.fixture(started)


@pytest.fixture
def impatient_probes():
    yield from started(stall_seconds=1.0)


def get(probes: ProbeProcess, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{probes.port}{path}", timeout=5)


def test_the_probe_process_answers_the_state_it_is_fed(probes):
    assert get(probes, "/healthz").json() == {"status": "ok"}
    assert get(probes, "/readyz").json() == {"status": "loading", "reason": "starting"}
    probes.feed(READY)
    wait_until(lambda: get(probes, "/readyz").status_code == 200, 10, 0.05)
    assert get(probes, "/readyz").json() == {"status": "ready", "model_version": "7"}
    assert get(probes, "/v2/health/ready").json() == {"ready": True}
    assert get(probes, "/metrics").status_code == 404  # the metrics live in the server


def test_the_probe_process_fails_its_probes_once_the_server_falls_silent(impatient_probes):
    probes = impatient_probes
    probes.feed(READY)
    wait_until(lambda: get(probes, "/readyz").status_code == 200, 10, 0.05)
    wait_until(lambda: get(probes, "/healthz").status_code == 503, 10, 0.1)
    assert get(probes, "/healthz").json()["status"] == "stalled"
    assert get(probes, "/readyz").status_code == 503
    probes.feed(READY)  # the loop runs again
    wait_until(lambda: get(probes, "/healthz").status_code == 200, 10, 0.05)


def test_the_probe_process_ends_with_its_server(probes):
    process = probes.process
    assert process is not None
    probes.stop()  # its input closed, as when the server exits or is killed
    assert process.poll() is not None
    with pytest.raises(httpx.TransportError):
        get(probes, "/healthz")


def test_what_is_not_a_probe_request_is_refused_or_dropped(probes):
    with socket.create_connection(("127.0.0.1", probes.port), timeout=10) as sock:
        sock.sendall(b"POST /healthz HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.0 405")
    with socket.create_connection(("127.0.0.1", probes.port), timeout=10) as sock:
        sock.sendall(b"GET /" + b"a" * 20_000 + b" HTTP/1.0\r\n\r\n")  # over the head limit
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b""
    assert get(probes, "/healthz").status_code == 200


def test_a_taken_port_is_refused_with_the_reason():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        probes = ProbeProcess("127.0.0.1", taken.getsockname()[1], 30.0)
        probes.start()
        with pytest.raises(OSError, match="cannot listen on 127.0.0.1:.*in use"):
            probes.wait_listening()


def test_idle_sockets_cannot_take_more_than_their_share(probes):
    """A flood of silent connections holds at most MAX_CONNECTIONS threads; the rest are
    closed at once, and the probes answer again once the flood lets go."""
    with contextlib.ExitStack() as stack:
        idle = [
            stack.enter_context(socket.create_connection(("127.0.0.1", probes.port)))
            for _ in range(MAX_CONNECTIONS)
        ]
        time.sleep(0.3)
        extra = stack.enter_context(socket.create_connection(("127.0.0.1", probes.port)))
        extra.settimeout(5)
        extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        try:
            answer = extra.recv(100)
        except ConnectionResetError:  # closed with the request unread
            answer = b""
        assert answer == b""  # closed unanswered
        assert len(idle) == MAX_CONNECTIONS
    wait_until(lambda: get(probes, "/healthz").status_code == 200, 10, 0.1)
