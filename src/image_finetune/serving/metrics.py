"""The server's Prometheus metrics, in a registry of their own: HTTP requests of every route
(status and latency, 5xx included), what the batcher does (batch sizes, queue depth, wait
and model time), the model served, and the process (CPU, memory, file descriptors, GC)."""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from image_finetune.serving.batcher import BatchRecord

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNMATCHED = "unmatched"  # the route label of paths no route serves (not the raw path:
#                          scanners would make one time series per path they try)


class ServingMetrics:
    """Every metric the server exports."""

    def __init__(self):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._http()
        self._inference()

    def _http(self) -> None:
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "http_requests_in_progress", "HTTP requests being served", registry=self.registry
        )

    def _inference(self) -> None:
        self.images = Counter("inference_images_total", "Images classified", registry=self.registry)
        self.batch_size = Histogram(
            "inference_batch_size",
            "Images per batch (one model call, or a few for a request over the batch size)",
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "inference_batch_requests",
            "Requests per batch",
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Histogram(
            "inference_queue_depth",
            "Images left waiting when a batch starts",
            buckets=(0, *SIZE_BUCKETS),
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "inference_queue_wait_seconds",
            "Oldest request's wait for its model call",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "inference_model_seconds",
            "Model time per batch",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_version = Gauge(
            "served_model_version", "Version being served (0: none)", registry=self.registry
        )
        self.refresh_failures = Counter(
            "model_refresh_failures_total",
            "Failed loads of the "
            "alias' version (the registry away, a bad version); "
            "the served model stays",
            registry=self.registry,
        )

    def record_batch(self, record: BatchRecord) -> None:
        self.images.inc(record.images)
        self.batch_size.observe(record.images)
        self.batch_requests.observe(record.requests)
        self.queue_depth.observe(record.queued_images)
        self.queue_wait.observe(record.waited_seconds)
        self.model_seconds.observe(record.seconds)


class HttpMetricsMiddleware:
    """Counts and times every HTTP request by route template and status, errors included
    (a plain ASGI middleware: no per-request task, unlike Starlette's BaseHTTPMiddleware)."""

    def __init__(self, app, metrics: ServingMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]  # 500 unless a response starts

        async def send_seen(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_seen)
        finally:
            self.metrics.in_progress.dec()
            route = getattr(scope.get("route"), "path", UNMATCHED)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status[0])).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
