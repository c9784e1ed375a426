"""The HTTP application: a simple multipart API (``/predict``, ``/metadata``) and the Open
Inference Protocol (``/v2/...``) over one model holder, one decode pool and one micro-batcher;
probes (``/healthz``, ``/readyz``, ``/v2/health/*``) and ``/metrics`` that answer at once
whatever the model is doing. Refusals carry a specific status and a message: ``detail`` on
the simple API (FastAPI's shape), ``error`` on ``/v2`` (the protocol's)."""

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from image_finetune.registry.client import redact
from image_finetune.serving import oip
from image_finetune.serving.auth import token_guard
from image_finetune.serving.batcher import MicroBatcher
from image_finetune.serving.budget import DecodeBudget
from image_finetune.serving.errors import Rejected
from image_finetune.serving.guard import RequestLimit
from image_finetune.serving.metrics import HttpMetricsMiddleware, ServingMetrics
from image_finetune.serving.models import ModelHolder
from image_finetune.serving.oip_routes import add_oip_inference, add_oip_metadata
from image_finetune.serving.operate_metrics import OperateMetrics
from image_finetune.serving.operations import Operations, add_operation_routes
from image_finetune.serving.probe_answers import (
    LIVENESS,
    OIP_LIVENESS,
    OIP_READINESS,
    READINESS,
    ProbeState,
    probe_answer,
)
from image_finetune.serving.probe_process import HEARTBEAT_SECONDS, ProbeProcess
from image_finetune.serving.server import Server, predict_current
from image_finetune.serving.settings import ServeSettings
from image_finetune.serving.simple_api import Detail, add_simple_api

log = logging.getLogger(__name__)


def create_app(
    settings: ServeSettings, holder: ModelHolder | None = None, probes: ProbeProcess | None = None
) -> FastAPI:
    """The FastAPI application; the model loads in the background once it starts. ``probes``:
    the probe process, fed the server's state from the event loop."""
    metrics = ServingMetrics()
    holder = holder or ModelHolder(settings, on_failure=metrics.refresh_failures.inc)
    operations = Operations(
        settings,
        holder,
        OperateMetrics(metrics.registry),
        lambda other: functools.partial(predict_current, other, settings.max_batch_size),
    )
    # The champion's batches go to the drift monitor once answered (the canary's never do).
    batcher = MicroBatcher(
        functools.partial(predict_current, holder, settings.max_batch_size),
        settings.max_batch_size,
        settings.max_wait_ms / 1000,
        settings.max_queued_images,
        metrics.record_batch,
        operations.monitor.add_answers,
    )
    server = Server(
        settings,
        holder,
        batcher,
        metrics,
        ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode"),
        DecodeBudget(settings.max_decode_pixels, settings.decode_wait_seconds),
        operations,
    )

    app = FastAPI(
        title="image-finetune",
        lifespan=lambda _app: background_work(server, probes),
        description=__doc__,
    )
    app.add_middleware(RequestLimit, limit=settings.max_connections)  # inside the metrics
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    app.add_exception_handler(Rejected, refusal)  # type: ignore[arg-type]  # Starlette types handlers for Exception
    add_probes(app, server)
    guarded = APIRouter(
        dependencies=[
            Depends(
                token_guard(
                    settings.token.get_secret_value() if settings.token else None,
                    settings.token_file,
                )
            )
        ]
    )
    add_simple_api(guarded, server)
    add_oip_metadata(guarded, server)
    add_oip_inference(guarded, server)
    add_operation_routes(guarded, server.operations, server.off_loop)
    app.include_router(guarded)
    document_models(app, oip.InferRequest)
    return app


@asynccontextmanager
async def background_work(server: Server, probes: ProbeProcess | None):
    """The threads behind the routes, and the probe process's feed, for the app's lifetime."""
    feed = asyncio.create_task(feed_probes(server.holder, probes))
    server.batcher.start()
    server.holder.start()
    server.operations.start()
    yield
    server.operations.stop()
    server.holder.stop()
    server.batcher.stop()
    server.pool.shutdown(wait=False, cancel_futures=True)
    feed.cancel()


async def refusal(request: Request, exc: Rejected) -> JSONResponse:
    """A Rejected as JSON: ``error`` on /v2 (the protocol's shape), ``detail`` elsewhere."""
    key = "error" if request.url.path.startswith("/v2") else "detail"
    if exc.status >= 500:
        log.warning("%s %s: %d %s", request.method, request.url.path, exc.status, exc.message)
    return JSONResponse({key: exc.message}, status_code=exc.status, headers=exc.headers)


def document_models(app: FastAPI, *models: type[BaseModel]) -> None:
    """Add models that routes reference by hand (request bodies read as streams) to the
    OpenAPI components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()  # FastAPI keeps it as app.openapi_schema
        schema.setdefault("components", {}).setdefault("schemas", {}).update(
            oip.json_schema_components(*models)
        )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


# -- probes and metrics (never behind a token, never behind inference) ----------------------


def probe_state(holder: ModelHolder) -> ProbeState:
    model = holder.current
    if model is None:
        return ProbeState(reason=redact(holder.problem or ""))
    return ProbeState(version=model.version)


async def feed_probes(holder: ModelHolder, probes: ProbeProcess | None) -> None:
    """The server's state to the probe process, every HEARTBEAT_SECONDS: its silence is the
    sign of a wedged event loop."""
    if probes is None:
        return
    while True:
        probes.feed(probe_state(holder))
        await asyncio.sleep(HEARTBEAT_SECONDS)


def add_probes(app: FastAPI, server: Server) -> None:
    """The probes on the application's port (the probe process answers the same ones)."""

    def answer(path: str) -> JSONResponse:
        status, content = probe_answer(path, probe_state(server.holder), None)
        return JSONResponse(content, status)

    @app.get(LIVENESS, tags=["probes"])
    async def healthz():
        """Liveness: the process answers."""
        return answer(LIVENESS)

    @app.get(READINESS, tags=["probes"], responses={503: {"model": Detail}})
    async def readyz():
        """Readiness: a model is loaded (503 with the reason while there is none)."""
        return answer(READINESS)

    @app.get(OIP_LIVENESS, tags=["open inference protocol"], response_model=oip.Liveness)
    async def oip_live():
        return answer(OIP_LIVENESS)

    @app.get(
        OIP_READINESS,
        tags=["open inference protocol"],
        response_model=oip.Readiness,
        responses={503: {"model": oip.Readiness}},
    )
    async def oip_ready():
        return answer(OIP_READINESS)

    @app.get("/metrics", tags=["probes"], response_class=Response)
    async def prometheus():
        """Prometheus metrics."""
        version = server.holder.current.version if server.holder.current else "0"
        server.metrics.model_version.set(float(version) if version.isdigit() else 0)
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)
