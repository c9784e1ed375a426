"""The HTTP protocol the server speaks: uvicorn's httptools protocol, stricter. A request line
and headers must arrive within a timeout and within a size cap, else 408/431/414 and the
connection is closed. Uvicorn has neither: a client sending one header line a second held a
connection for as long as it liked (50 of them kept /readyz at 503 under uvicorn's old
connection limit), a 16 MiB header was accepted, and a 32 MiB URL cost 1.5 s of CPU being
concatenated. Used by ``serve.serve_champion``."""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)
REASONS = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


def guarded_protocol(header_timeout: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """Uvicorn's httptools protocol with these limits (``uvicorn.run(http=...)``)."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes},
    )


class GuardedHttpProtocol(HttpToolsProtocol):
    """A request's line and headers within ``header_timeout`` seconds of its first byte (of
    the connection, for the first request) and ``max_header_bytes`` bytes; the URL alone
    within a quarter of that (414)."""

    header_timeout: float = 10.0
    max_header_bytes: int = 32 * 1024
    _head_timer: asyncio.TimerHandle | None  # set per connection (connection_made)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_bytes = self._head_parsed = 0
        self._refused, self._head_timer = False, None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # after a refusal, whatever else arrives is dropped
            return
        super().data_received(data)
        # Still in a request's head: all of it was head (the parser holds a header's value
        # until it ends, so the headers handed over alone would let a 16 MiB value through).
        if self._head_timer is not None:
            self._head_bytes += len(data)
            self._check_head_size(self._head_bytes)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = self._head_parsed = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self.max_header_bytes // 4:
            self._refuse(414, f"request target over {self.max_header_bytes // 4} bytes")
        self._head_parsed += len(url)
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_parsed += len(name) + len(value) + 4
        self._check_head_size(self._head_parsed)
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        if not self._refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _check_head_size(self, size: int) -> None:
        if size > self.max_header_bytes:
            self._refuse(431, f"request line and headers over {self.max_header_bytes} bytes")

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._refuse(408, f"request line and headers not received within {self.header_timeout:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a JSON ``detail`` and close the connection."""
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        self._disarm_head_timer()
        log.debug("refused a request from %s: %d %s", self.client, status, message)
        body = json.dumps({"detail": message}).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, REASONS[status], len(body)) + body
        )
        self.transport.close()
