"""Reading request bodies within the limits, while they stream in: nothing over a limit is
ever buffered, a multipart body is parsed chunk by chunk in memory (no spooling to disk),
and a client that stops sending is cut off."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from image_finetune.serving.errors import Rejected

IMAGE_FIELDS = frozenset({"files", "file"})  # the multipart parts that carry images
MAX_FIELD_BYTES = 1024  # a text field beside the images (they are ignored)
CLIENT_CLOSED = 499  # nginx's status for a request its client abandoned
# A body cut for its timeout: the connection ends with the answer rather than staying open
# while the rest trickles in. (Not on a 413: closing while a fast sender's bytes are still
# arriving resets the connection, and the client never reads why.)
CLOSE = {"Connection": "close"}


def media_type(request) -> str:
    """The request's Content-Type without parameters, lower case."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def consume(request, limit: int, timeout: float, sink: Callable[[bytes], None]) -> None:
    """Pass the body's chunks to ``sink`` as they arrive; 413 once it passes ``limit``
    bytes (at once where Content-Length says so), 408 when it takes over ``timeout``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Rejected(413, f"body of {declared} bytes, over the limit of {limit}")
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Rejected(413, f"body over the limit of {limit} bytes")
                sink(chunk)
    except TimeoutError as exc:
        raise Rejected(408, f"body not received within {timeout:g} s", CLOSE) from exc
    except ClientDisconnect as exc:  # counted apart from the server's own errors
        raise Rejected(CLIENT_CLOSED, "the client went away while sending") from exc


async def read_body(request, limit: int, timeout: float) -> bytes:
    """The whole body, at most ``limit`` bytes."""
    chunks: list[bytes] = []
    await consume(request, limit, timeout, chunks.append)
    return b"".join(chunks)


@dataclass
class Part:
    """One part of a multipart body."""

    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


class MultipartReader:
    """A multipart/form-data parser fed chunk by chunk; each limit is checked as the data
    arrives: the number of parts, of image parts, and the bytes of each part."""

    def __init__(self, boundary: bytes, max_parts: int, max_images: int, max_image_bytes: int):
        self.max_parts, self.max_images = max_parts, max_images
        self.max_image_bytes = max_image_bytes
        self.parts: list[Part] = []
        self.images = 0
        self._header_field = self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": self._add_field,
                "on_header_value": self._add_value,
                "on_header_end": self._end_header,
                "on_headers_finished": self._headers_done,
                "on_part_data": self._add_data,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise Rejected(400, f"malformed multipart body ({exc})") from exc

    def finish(self) -> list[Part]:
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise Rejected(400, f"malformed multipart body ({exc})") from exc
        return self.parts

    def _begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise Rejected(413, f"too many parts: at most {self.max_parts} per request")
        self.parts.append(Part())
        self._headers = {}

    def _add_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _add_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _end_header(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        part = self.parts[-1]
        part.name = options.get(b"name", b"").decode("latin-1")
        filename = options.get(b"filename")
        part.filename = None if filename is None else filename.decode("utf-8", "replace")
        if part.name in IMAGE_FIELDS:
            self.images += 1
            if self.images > self.max_images:
                raise Rejected(413, f"too many images: at most {self.max_images} per request")

    def _add_data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.data += data[start:end]
        limit = self.max_image_bytes if part.name in IMAGE_FIELDS else MAX_FIELD_BYTES
        if len(part.data) > limit:
            raise Rejected(
                413, f"{part.filename or part.name}: part over the limit of {limit} bytes"
            )


def boundary_of(request) -> bytes:
    """The multipart boundary named in the Content-Type; 400 without one."""
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise Rejected(400, "multipart/form-data without a boundary")
    return boundary


def image_parts(parts: list[Part]) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each image part; 400 for a text field where a file belongs."""
    images = []
    for index, part in enumerate(p for p in parts if p.name in IMAGE_FIELDS):
        if part.filename is None:
            raise Rejected(
                400,
                f"'{part.name}' was sent as a text field: send images as "
                "file uploads (curl -F files=@cat.png)",
            )
        images.append((part.filename or f"file{index}", bytes(part.data)))
    return images


async def read_multipart_images(request, settings) -> list[tuple[str, bytes]]:
    """The images of a multipart/form-data request, every limit enforced while reading."""
    reader = MultipartReader(
        boundary_of(request), settings.max_parts, settings.max_images, settings.max_image_bytes
    )
    await consume(request, settings.max_body_bytes, settings.body_timeout_seconds, reader.feed)
    return image_parts(reader.finish())
