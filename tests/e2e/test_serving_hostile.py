"""Hostile and unusual requests against a real server process, as a user or an attacker would
send them: each gets its own 4xx with a message that says why, nothing over a limit is
buffered, and the server stays alive and answers the next good request. Images as users
send them (EXIF-rotated, palette, grayscale, 16-bit, CMYK, with alpha) are classified."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.serving_support import (
    MAX_IMAGE_BYTES,
    MAX_IMAGES,
    MAX_PIXELS,
    png,
    stream_body,
)

MIB = 1024 * 1024


def declared_png(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares width x height pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def jpeg(champion) -> bytes:
    return next((champion["folder"] / "test" / "cat").glob("*.jpg")).read_bytes()


def files(*contents: bytes, kind: str = "image/png") -> dict:
    return {"files": [("files", (f"{i}.png", data, kind)) for i, data in enumerate(contents)]}


def raw(data: bytes, kind: str = "image/png") -> dict:
    return {"content": data, "headers": {"content-type": kind}}


def hostile_requests(jpeg: bytes, model: str) -> dict[str, tuple[str, dict]]:
    """name -> (path, httpx.post arguments)."""
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    infer = f"/v2/models/{model}/infer"
    tensor = {"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}
    return {
        "not_an_image": ("/predict", raw(b"hello, not a picture")),
        "empty": ("/predict", raw(b"", "image/jpeg")),
        "truncated": ("/predict", raw(jpeg[: len(jpeg) // 3], "image/jpeg")),
        "gif": ("/predict", raw(gif.getvalue(), "image/png")),
        "wrong_type": ("/predict", raw(b"{}", "application/json")),
        "image_over_the_limit": ("/predict", raw(jpeg + b"\0" * MAX_IMAGE_BYTES, "image/jpeg")),
        "pixel_bomb": ("/predict", raw(declared_png(8000, 8000))),
        "pixel_bombs_batch": ("/predict", files(*[declared_png(8000, 8000)] * MAX_IMAGES)),
        "pil_decompression_bomb": ("/predict", raw(declared_png(20_000, 10_000))),
        "too_many_images": ("/predict", files(*[jpeg] * (MAX_IMAGES + 1), kind="image/jpeg")),
        "part_over_the_limit": ("/predict", files(b"\0" * (MAX_IMAGE_BYTES + 1))),
        "too_many_parts": (
            "/predict",
            {
                "data": {f"field{i}": "x" for i in range(100)},
                "files": [("files", ("a.jpg", jpeg, "image/jpeg"))],
            },
        ),
        "text_field_named_files": (
            "/predict",
            {"data": {"files": "hello"}, "files": [("other", ("a", b"a", "text/plain"))]},
        ),
        "no_boundary": ("/predict", raw(b"--x\r\n", "multipart/form-data")),
        "malformed_multipart": (
            "/predict",
            raw(b"garbage" * 10, "multipart/form-data; boundary=xyz"),
        ),
        "negative_k": ("/predict?k=-1", raw(jpeg, "image/jpeg")),
        "zero_k": ("/predict?k=0", raw(jpeg, "image/jpeg")),
        "oip_not_json": (infer, raw(b"{not json", "application/json")),
        "oip_no_inputs": (infer, {"json": {"inputs": []}}),
        "oip_unknown_model": ("/v2/models/nope/infer", {"json": {"inputs": [tensor]}}),
        "oip_unknown_input": (infer, {"json": {"inputs": [{**tensor, "name": "x"}]}}),
        "oip_wrong_shape": (infer, {"json": {"inputs": [{**tensor, "shape": [1, 28, 28, 3]}]}}),
        "oip_out_of_range": (infer, {"json": {"inputs": [{**tensor, "data": [256] * 3072}]}}),
        "oip_too_few_values": (infer, {"json": {"inputs": [{**tensor, "data": [0] * 10}]}}),
        "oip_too_many_images": (
            infer,
            {
                "json": {
                    "inputs": [
                        {
                            **tensor,
                            "shape": [MAX_IMAGES + 1, 32, 32, 3],
                            "data": [0] * 3072 * (MAX_IMAGES + 1),
                        }
                    ]
                }
            },
        ),
        "oip_huge_declared_shape": (
            infer,
            {"json": {"inputs": [{**tensor, "shape": [2**62, 32, 32, 3], "data": []}]}},
        ),
        "oip_float_data": (infer, {"json": {"inputs": [{**tensor, "data": [0.5] * 3072}]}}),
        "oip_bool_data": (infer, {"json": {"inputs": [{**tensor, "data": [True] * 3072}]}}),
        "oip_bad_base64": (
            infer,
            {
                "json": {
                    "inputs": [
                        {"name": "images", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}
                    ]
                }
            },
        ),
        "oip_bytes_not_an_image": (
            infer,
            {
                "json": {
                    "inputs": [
                        {
                            "name": "images",
                            "datatype": "BYTES",
                            "shape": [1],
                            "data": [base64.b64encode(b"hello").decode()],
                        }
                    ]
                }
            },
        ),
        "oip_header_length_too_long": (
            infer,
            {
                "content": b'{"inputs": []}',
                "headers": {
                    "content-type": "application/octet-stream",
                    "inference-header-content-length": "1000",
                },
            },
        ),
    }


EXPECTED = {
    "not_an_image": (400, "not an image file"),
    "empty": (400, "empty body"),
    "truncated": (400, "corrupt or truncated image"),
    "gif": (415, "GIF images are not accepted"),
    "wrong_type": (415, "unsupported content type"),
    "image_over_the_limit": (413, "over the limit"),
    "pixel_bomb": (413, f"over the budget of {MAX_PIXELS}"),
    "pixel_bombs_batch": (413, f"over the budget of {MAX_PIXELS}"),
    "pil_decompression_bomb": (413, "decompression bomb"),
    "too_many_images": (413, "too many images"),
    "part_over_the_limit": (413, "part over the limit"),
    "too_many_parts": (413, "too many parts"),
    "text_field_named_files": (400, "sent as a text field"),
    "no_boundary": (400, "without a boundary"),
    "malformed_multipart": (400, "malformed multipart body"),
    "negative_k": (422, "greater than or equal to 1"),
    "zero_k": (422, "greater than or equal to 1"),
    "oip_not_json": (400, "not an inference request"),
    "oip_no_inputs": (400, "inputs"),
    "oip_unknown_model": (404, "unknown model 'nope'"),
    "oip_unknown_input": (400, "unknown input 'x'"),
    "oip_wrong_shape": (400, "expected [N, 32, 32, 3]"),
    "oip_out_of_range": (400, "out of range"),
    "oip_too_few_values": (400, "10 values for shape"),
    "oip_too_many_images": (413, "too many images"),
    "oip_huge_declared_shape": (413, "too many images"),
    "oip_float_data": (400, "must be integers 0..255, not float"),
    "oip_bool_data": (400, "must be integers 0..255, not bool"),
    "oip_bad_base64": (400, "base64"),
    "oip_bytes_not_an_image": (400, "not an image file"),
    "oip_header_length_too_long": (400, "does not fit the body"),
}


def assert_still_serving(url: str, jpeg: bytes) -> None:
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    ok = httpx.post(f"{url}/predict", timeout=60, **raw(jpeg, "image/jpeg"))
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_hostile_request_gets_its_4xx_and_the_server_keeps_serving(
    champion, server, jpeg, kind
):
    path, arguments = hostile_requests(jpeg, champion["params"].registry.model_name)[kind]
    status, message = EXPECTED[kind]
    start = time.perf_counter()
    response = httpx.post(f"{server.url}{path}", timeout=60, **arguments)
    assert response.status_code == status, response.text
    body = response.json()
    detail = body.get("error") if path.startswith("/v2") else body["detail"]
    assert message in str(detail), detail
    assert time.perf_counter() - start < 15  # refused, not worked on
    assert_still_serving(server.url, jpeg)


MULTIPART_START = (
    b'--b\r\nContent-Disposition: form-data; name="files"; '
    b'filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
)


@pytest.mark.parametrize(
    "path,content_type,prefix",
    [
        ("/predict", "image/jpeg", b""),
        ("/predict", "multipart/form-data; boundary=b", MULTIPART_START),
        ("/v2/models/served/infer", "application/json", b""),
    ],
    ids=["raw image", "multipart part", "inference request"],
)
def test_a_streamed_body_is_refused_at_the_limit_not_buffered(
    server, jpeg, path, content_type, prefix
):
    """200 MiB sent chunked (no Content-Length): the refusal comes at the limit, long before
    the end, and the server's memory does not grow by the body."""
    before = server.rss_bytes()
    status, sent = stream_body(server.port, path, content_type, 200 * MIB, prefix=prefix)
    assert status == 413
    assert sent < 64 * MIB, f"the server read {sent} bytes before refusing"
    assert server.rss_bytes() - before < 64 * MIB
    assert_still_serving(server.url, jpeg)


def test_a_declared_length_over_the_limit_is_refused_before_the_body(server, jpeg):
    status, sent = stream_body(
        server.port, "/v2/models/served/infer", "application/json", 0, declared=64 * MIB
    )
    assert status == 413 and sent == 0
    assert_still_serving(server.url, jpeg)


def test_costly_valid_images_do_not_stall_the_probes(server, jpeg):
    """Images within every limit that cost real decoding work (each as many pixels as the
    budget allows): the probes answer meanwhile, and so does the request."""
    side = int(MAX_PIXELS**0.5)
    heavy = png(np.full((side, side, 3), 90, np.uint8))
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(
            response=httpx.post(f"{server.url}/predict", timeout=120, **files(*[heavy] * 12))
        )
    )
    worker.start()
    probes = []
    while worker.is_alive():
        start = time.perf_counter()
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        probes.append(time.perf_counter() - start)
        time.sleep(0.05)
    worker.join()
    assert result["response"].status_code == 200, result["response"].text
    assert max(probes) < 1.0, probes


def unusual_images() -> dict[str, bytes]:
    """Images as cameras, editors and scanners write them."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    encoded = {}
    for name, image, options in [
        ("exif.jpg", Image.fromarray(pixels), {"format": "JPEG", "exif": exif.tobytes()}),
        ("palette.png", Image.fromarray(pixels).quantize(32), {"format": "PNG"}),
        ("gray.png", Image.fromarray(pixels[..., 0]), {"format": "PNG"}),
        ("gray16.png", Image.fromarray(pixels[..., 0].astype(np.uint16) * 257), {"format": "PNG"}),
        ("cmyk.jpg", Image.fromarray(pixels).convert("CMYK"), {"format": "JPEG"}),
        ("alpha.png", Image.fromarray(np.dstack([pixels, pixels[..., :1]])), {"format": "PNG"}),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, **options)
        encoded[name] = buffer.getvalue()
    return encoded


def test_images_as_users_send_them_are_classified(server):
    images = unusual_images()
    response = httpx.post(
        f"{server.url}/predict",
        timeout=60,
        files=[
            ("files", (name, data, "application/octet-stream")) for name, data in images.items()
        ],
    )
    assert response.status_code == 200, response.text
    assert [p["file"] for p in response.json()["predictions"]] == list(images)
