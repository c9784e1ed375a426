"""The request limit in front of the application, so that many clients cannot starve the
probes (the protocol-level half, header timeouts and size caps, is
``steps/http_protocol.py``, since uvicorn belongs to the steps layer):

- ``RequestLimit`` (ASGI): at most ``limit`` requests in flight; more get 503 at once. The
  probes and ``/metrics`` are never counted and never refused: a kubelet or Prometheus must
  see the truth while inference is saturated. (Uvicorn's ``limit_concurrency`` counted the
  probes and every idle connection, so a few dozen slow sockets made the pod look dead.)
  After a burst of large bodies, once nothing is in flight, free heap memory is handed back
  to the system (``memory.release_free_memory``).
"""

from __future__ import annotations

import asyncio
import json

from image_finetune.serving.memory import release_free_memory

# Answered whatever the load: liveness, readiness (both dialects) and the metrics.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
# Request bodies read since memory was last handed back that make it worth doing again.
TRIM_AFTER_BYTES = 32 * 1024 * 1024


# -- the ASGI request limit -----------------------------------------------------------------


class RequestLimit:
    """At most ``limit`` requests in flight, the probes and /metrics apart (never counted,
    never refused); free memory handed back after bursts of large bodies."""

    def __init__(self, app, limit: int, on_refused=lambda: None):
        self.app, self.limit, self.on_refused = app, limit, on_refused
        self.in_flight = 0
        self.bytes_since_trim = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.on_refused()
            await refuse_busy(send, self.limit, scope["path"].startswith("/v2"))
            return
        self.in_flight += 1
        try:
            await self.app(scope, self._counting(receive), send)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self.bytes_since_trim >= TRIM_AFTER_BYTES:
                self.bytes_since_trim = 0
                asyncio.get_running_loop().run_in_executor(None, release_free_memory)

    def _counting(self, receive):
        async def counted():
            message = await receive()
            self.bytes_since_trim += len(message.get("body", b""))
            return message

        return counted


async def refuse_busy(send, limit: int, oip: bool) -> None:
    message = f"busy: {limit} requests in flight, the most this server takes; retry"
    body = json.dumps({"error" if oip else "detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
