"""Slow and greedy clients against a real server process: sockets that trickle headers or
bodies, oversized headers and URLs, and requests whose images are cheap to send and costly to
decode. None of them may starve the probes (a kubelet would restart the pod) or the clients
that behave; each is cut off or refused with its own status. And a rotated token file takes
effect without a restart."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from image_finetune.serving.probe_answers import PROBE_ROUTES
from tests.e2e.serving_support import Server, png, serve, wait_for
from tests.secrets_volume import rotate_like_kubelet
from tests.support import free_port

MAX_CONNECTIONS = 40
HEADER_TIMEOUT = 3
BODY_TIMEOUT = 3
PROBES = ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")


@pytest.fixture(scope="module")
def guarded(champion, tmp_path_factory):
    """The champion served with a modest request limit and short timeouts; the default
    image limits (64 images of up to 4096x4096)."""
    registry = champion["params"].registry
    env = {
        "MLFLOW_TRACKING_URI": registry.tracking_uri,
        "IMAGE_FINETUNE_MODEL_NAME": registry.model_name,
        "IMAGE_FINETUNE_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "IMAGE_FINETUNE_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "IMAGE_FINETUNE_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "IMAGE_FINETUNE_PROBE_PORT": str(free_port()),
    }
    running = serve(env, [], tmp_path_factory.mktemp("guarded"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def jpeg(champion) -> bytes:
    return next((champion["folder"] / "test" / "cat").glob("*.jpg")).read_bytes()


def statuses(server: Server, jpeg: bytes) -> dict[str, int]:
    """What the probes (on both ports) and a well-behaved prediction get now."""
    url = server.url
    seen = {path: httpx.get(f"{url}{path}", timeout=10).status_code for path in PROBES}
    probe_port = f"http://127.0.0.1:{server.env['IMAGE_FINETUNE_PROBE_PORT']}"
    for path in PROBE_ROUTES:
        seen[f"probe port {path}"] = httpx.get(f"{probe_port}{path}", timeout=10).status_code
    seen["/predict"] = httpx.post(
        f"{url}/predict", content=jpeg, timeout=30, headers={"content-type": "image/jpeg"}
    ).status_code
    return seen


class Tricklers:
    """``count`` sockets that send ``opening`` and then one byte of ``drip`` a second."""

    def __init__(self, port: int, count: int, opening: bytes, drip: bytes):
        self.sockets = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(opening)
            self.sockets.append(sock)
        self.drip, self.stop = drip, threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        while not self.stop.wait(1.0):
            for sock in self.sockets:
                with contextlib.suppress(OSError):  # cut off by the server: as wanted
                    sock.sendall(self.drip)

    def answers(self, within: float) -> list[bytes]:
        """Each socket's status line, read while they still trickle (b"" where closed)."""
        deadline, lines = time.monotonic() + within, []
        for sock in self.sockets:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                lines.append(sock.recv(4096).split(b"\r\n")[0])
            except TimeoutError:
                lines.append(b"(still open)")
            except OSError:
                lines.append(b"")
        return lines

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.sockets:
            sock.close()


def test_sockets_trickling_headers_neither_starve_the_probes_nor_predictions(guarded, jpeg):
    """50 sockets sending a header line a second, more than the request limit: the probes
    and a prediction answer 200 meanwhile, and each socket is cut with 408."""
    tricklers = Tricklers(
        guarded.port, 50, b"GET /readyz HTTP/1.1\r\nHost: x\r\n", b"X-Slow: y\r\n"
    )
    try:
        time.sleep(0.5)
        during = statuses(guarded, jpeg)
        cut = tricklers.answers(HEADER_TIMEOUT + 5)
    finally:
        tricklers.close()
    assert set(during.values()) == {200}, during
    # b"": closed with a reset before the answer could be read (data was still in flight)
    assert set(cut) <= {b"HTTP/1.1 408 Request Timeout", b""}, set(cut)
    assert b"HTTP/1.1 408 Request Timeout" in cut


def test_trickling_bodies_are_cut_at_the_body_timeout_and_never_block_the_probes(guarded, jpeg):
    """Slots held by slow bodies can make predictions wait (503, retry), never the probes;
    the bodies are cut with 408 after the body timeout, and predictions answer again."""
    opening = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 100000\r\n\r\n\xff"
    )
    tricklers = Tricklers(guarded.port, MAX_CONNECTIONS + 5, opening, b"\0")
    try:
        time.sleep(0.5)
        during = statuses(guarded, jpeg)
        cut = tricklers.answers(BODY_TIMEOUT + 5)
    finally:
        tricklers.close()
    assert {status for path, status in during.items() if path != "/predict"} == {200}, during
    assert during["/predict"] == 503  # every slot is held by a slow body: retry later
    assert b"(still open)" not in cut, cut  # b"": closed, the answer lost to a reset
    assert set(cut) <= {
        b"HTTP/1.1 408 Request Timeout",
        b"HTTP/1.1 503 Service Unavailable",
        b"",
    }, set(cut)
    assert b"HTTP/1.1 408 Request Timeout" in cut
    assert statuses(guarded, jpeg)["/predict"] == 200


def raw_request(port: int, request: bytes) -> bytes:
    """The status line the server answers ``request`` with (it may close while we send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        with contextlib.suppress(OSError):  # refused and closed before all was sent
            sock.sendall(request)
        return sock.recv(4096).split(b"\r\n")[0]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_oversized_header_or_url_is_refused_before_it_is_read(guarded, jpeg):
    start = cpu_seconds(guarded.process.pid)
    big_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (16 << 20) + b"\r\n\r\n"
    assert raw_request(guarded.port, big_header).startswith(b"HTTP/1.1 431")
    many = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 60) for i in range(1000))
    assert raw_request(
        guarded.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n"
    ).startswith(b"HTTP/1.1 431")
    big_url = b"GET /healthz?" + b"a" * (32 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw_request(guarded.port, big_url).startswith(b"HTTP/1.1 414")
    assert cpu_seconds(guarded.process.pid) - start < 1.0  # not parsed to the end
    assert statuses(guarded, jpeg)["/predict"] == 200


def multipart_of(images: list[bytes]) -> dict:
    return {"files": [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]}


def test_images_cheap_to_send_and_costly_to_decode_are_refused_before_decoding(guarded, jpeg):
    """Two requests of 64 solid 4096x4096 PNGs (3.8 MB each, within max_images and
    max_pixels) used to cost 45 CPU-seconds while a one-JPEG client waited: now they are
    refused by their pixel budget from the headers alone, and the JPEG is answered."""
    solid = png(np.full((4096, 4096, 3), 90, np.uint8))
    start, results = cpu_seconds(guarded.process.pid), {}

    def post(key: str, **arguments) -> None:
        results[key] = httpx.post(f"{guarded.url}/predict", timeout=120, **arguments)

    heavy = [
        threading.Thread(target=post, args=(f"heavy{i}",), kwargs=multipart_of([solid] * 64))
        for i in range(2)
    ]
    for thread in heavy:
        thread.start()
    post("jpeg", content=jpeg, headers={"content-type": "image/jpeg"})
    for thread in heavy:
        thread.join()
    for key in ("heavy0", "heavy1"):
        assert results[key].status_code == 413, results[key].text
        assert "per-request budget" in results[key].json()["detail"]
    assert results["jpeg"].status_code == 200, results["jpeg"].text
    assert cpu_seconds(guarded.process.pid) - start < 10  # was 45 s of decoding


def test_a_large_jpeg_is_decoded_at_a_reduced_size_and_classified(guarded):
    """A 12-megapixel photo fits the request's budget many times over as a JPEG (decoded at
    1/8 of its side for a small model)."""
    y, x = np.mgrid[0:3000, 0:4000]
    photo = np.dstack([x * 255 // 4000, y * 255 // 3000, (x + y) * 255 // 7000])
    buffer = io.BytesIO()
    Image.fromarray(photo.astype(np.uint8)).save(buffer, format="JPEG", quality=80)
    response = httpx.post(
        f"{guarded.url}/predict",
        timeout=120,
        files=[("files", (f"{i}.jpg", buffer.getvalue(), "image/jpeg")) for i in range(16)],
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 16


def test_a_rotated_token_secret_takes_effect_without_a_restart(tmp_path):
    """The server reads IMAGE_FINETUNE_TOKEN_FILE again when it changes: the new token is
    accepted and the old one refused (no registry needed: /v2 is the server's metadata)."""
    mount = tmp_path / "secret"
    mount.mkdir()
    rotate_like_kubelet(mount, "first-token", 1)
    (mount / "token").symlink_to("..data/token")
    (tmp_path / "empty").mkdir()
    server = Server(
        {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
            "IMAGE_FINETUNE_TOKEN_FILE": str(mount / "token"),
        },
        [],
        tmp_path / "empty",
    )
    try:
        wait_for(f"{server.url}/healthz", server.process)

        def status(token: str) -> int:
            return httpx.get(
                f"{server.url}/v2", timeout=10, headers={"authorization": f"Bearer {token}"}
            ).status_code

        assert (status("first-token"), status("second-token")) == (200, 401)
        rotate_like_kubelet(mount, "second-token", 2)
        assert (status("second-token"), status("first-token")) == (200, 401)
    finally:
        server.stop()
