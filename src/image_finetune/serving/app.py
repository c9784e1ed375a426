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
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from image_finetune.inference import top_k
from image_finetune.registry.client import redact
from image_finetune.serving import oip
from image_finetune.serving.auth import token_guard
from image_finetune.serving.batcher import MicroBatcher, Overloaded
from image_finetune.serving.budget import DecodeBudget
from image_finetune.serving.decode import plan_decode
from image_finetune.serving.errors import Rejected
from image_finetune.serving.feedback import REQUEST_ID_HEADER, new_request_id
from image_finetune.serving.guard import RequestLimit
from image_finetune.serving.metrics import HttpMetricsMiddleware, ServingMetrics
from image_finetune.serving.models import LoadedModel, ModelHolder
from image_finetune.serving.operate_metrics import OperateMetrics
from image_finetune.serving.operations import Operations, add_operation_routes
from image_finetune.serving.reading import media_type, read_body, read_multipart_images
from image_finetune.serving.settings import ServeSettings

log = logging.getLogger(__name__)
IMAGE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")


# -- the simple API's messages ----------------------------------------------------------------


class ClassProbability(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class")
    probability: float


class FilePrediction(BaseModel):
    file: str
    top_k: list[ClassProbability]


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    request_id: str = Field(description="for POST /feedback (also the X-Request-Id header)")
    predictions: list[FilePrediction]


class ModelInfo(BaseModel):
    model_name: str
    alias: str
    model_version: str
    class_names: list[str]
    input_shape: list[int]
    input_dtype: str
    image_fit: str = Field(description="how images of another size are fitted: resize "
                                       "(stretched) or center_crop (aspect ratio kept)")
    engine: str = Field(description="what computes the answers: tensorflow (Keras), "
                                    "onnxruntime or openvino")
    precision: str = Field(description="fp32, or int8 where the version's int8 variant "
                                       "passed its accuracy rule")
    loaded_at: float
    max_images: int
    max_image_bytes: int
    max_pixels: int


class Detail(BaseModel):
    detail: str


PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"files": {
        "type": "array", "items": {"type": "string", "format": "binary"}}}}},
    **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_TYPES}}}}
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": "binary tensor data extension"}}}}


# -- what the routes share ------------------------------------------------------------------


@dataclass
class Server:
    """The parts behind the routes."""

    settings: ServeSettings
    holder: ModelHolder
    batcher: MicroBatcher
    metrics: ServingMetrics
    pool: ThreadPoolExecutor
    budget: DecodeBudget
    operations: Operations

    def model(self) -> LoadedModel:
        """The model being served; 503 while there is none."""
        model = self.holder.current
        if model is None:
            raise Rejected(503, f"no model loaded yet ({redact(self.holder.problem or '')})",
                           {"Retry-After": str(int(self.settings.retry_seconds))})
        return model

    def model_named(self, name: str, version: str | None = None) -> LoadedModel:
        """The model a ``/v2/models/{name}[/versions/{version}]`` path names; 404 otherwise."""
        if name != self.settings.model_name:
            raise Rejected(404, f"unknown model {name!r}: this server serves "
                                f"{self.settings.model_name!r}")
        model = self.model()
        if version is not None and version != model.version:
            raise Rejected(404, f"{name} version {version} is not served (v{model.version} is)")
        return model

    async def off_loop(self, function, *args):
        """Run CPU work (decoding, JSON of tensors) in the decode pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(function, *args))

    async def decode(self, files: list[tuple[str, bytes]], size: int, how: str) -> np.ndarray:
        """The images as the model's batch: their headers read and their pixels counted
        (413 over the request's budget) off the decode pool, then decoded in it once they fit
        the decode budget."""
        plan = await asyncio.to_thread(plan_decode, files, size, self.settings, how)
        return await self.budget.run(plan.pixels, self.pool, plan.decode)

    async def classify(self, images: np.ndarray) -> tuple[np.ndarray, LoadedModel]:
        """Probabilities from the batcher, and the model that computed them."""
        try:
            return await self.batcher.submit(images)
        except Overloaded as exc:
            raise Rejected(503, f"overloaded: {exc}; retry", {"Retry-After": "1"}) from exc


def predict_current(holder: ModelHolder, max_batch_size: int,
                    batch: np.ndarray) -> tuple[np.ndarray, LoadedModel]:
    """Probabilities from whichever model is current (on the batcher's thread), in model
    calls of at most ``max_batch_size`` images: a request larger than that is split, since
    per image a large batch is slower on a CPU than a few of the right size."""
    model = holder.current
    if model is None:
        raise Rejected(503, "no model loaded")
    chunks = [model.answer(batch[start:start + max_batch_size])
              for start in range(0, len(batch), max_batch_size)]
    return np.concatenate(chunks), model


# -- the application ------------------------------------------------------------------------


def create_app(settings: ServeSettings, holder: ModelHolder | None = None) -> FastAPI:
    """The FastAPI application; the model loads in the background once it starts."""
    metrics = ServingMetrics()
    holder = holder or ModelHolder(settings, on_failure=metrics.refresh_failures.inc)
    batcher = MicroBatcher(functools.partial(predict_current, holder, settings.max_batch_size),
                           settings.max_batch_size,
                           settings.max_wait_ms / 1000, settings.max_queued_images,
                           metrics.record_batch)
    operations = Operations(settings, holder, OperateMetrics(metrics.registry),
                            lambda other: functools.partial(predict_current, other,
                                                            settings.max_batch_size))
    server = Server(settings, holder, batcher, metrics,
                    ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode"),
                    DecodeBudget(settings.max_decode_pixels, settings.decode_wait_seconds),
                    operations)

    @asynccontextmanager
    async def lifespan(_app):
        server.batcher.start()
        server.holder.start()
        server.operations.start()
        yield
        server.operations.stop()
        server.holder.stop()
        server.batcher.stop()
        server.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="image-finetune", lifespan=lifespan, description=__doc__)
    app.add_middleware(RequestLimit, limit=settings.max_connections)  # inside the metrics
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    app.add_exception_handler(Rejected, refusal)
    add_probes(app, server)
    guarded = APIRouter(dependencies=[Depends(token_guard(
        settings.token.get_secret_value() if settings.token else None, settings.token_file))])
    add_simple_api(guarded, server)
    add_oip_metadata(guarded, server)
    add_oip_inference(guarded, server)
    add_operation_routes(guarded, server.operations, server.off_loop)
    app.include_router(guarded)
    document_models(app, oip.InferRequest)
    return app


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

    def openapi() -> dict:
        if app.openapi_schema is None:
            schemas = generate().setdefault("components", {}).setdefault("schemas", {})
            schemas.update(oip.json_schema_components(*models))
        return app.openapi_schema

    app.openapi = openapi


# -- probes and metrics (never behind a token, never behind inference) ----------------------


def add_probes(app: FastAPI, server: Server) -> None:
    @app.get("/healthz", tags=["probes"])
    async def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"], responses={503: {"model": Detail}})
    async def readyz():
        """Readiness: a model is loaded (503 with the reason while there is none)."""
        model = server.holder.current
        if model is None:
            return JSONResponse({"status": "loading",
                                 "reason": redact(server.holder.problem or "")}, 503)
        return {"status": "ready", "model_version": model.version}

    @app.get("/v2/health/live", tags=["open inference protocol"],
             response_model=oip.Liveness)
    async def oip_live():
        return oip.Liveness(live=True)

    @app.get("/v2/health/ready", tags=["open inference protocol"],
             response_model=oip.Readiness, responses={503: {"model": oip.Readiness}})
    async def oip_ready():
        ready = server.holder.current is not None
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["probes"], response_class=Response)
    async def prometheus():
        """Prometheus metrics."""
        version = server.holder.current.version if server.holder.current else "0"
        server.metrics.model_version.set(float(version) if version.isdigit() else 0)
        return Response(generate_latest(server.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)


# -- the simple API -------------------------------------------------------------------------


async def read_images(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image: one raw image body, or multipart ``files``."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        return await read_multipart_images(request, settings)
    if kind in IMAGE_TYPES:
        return [("body", await read_body(request, settings.max_image_bytes,
                                         settings.body_timeout_seconds))]
    raise Rejected(415, f"unsupported content type {kind or '(none)'!r}: send image/png, "
                        "image/jpeg, or multipart/form-data with one or more 'files'")


def add_simple_api(router: APIRouter, server: Server) -> None:
    settings = server.settings
    errors = {status: {"model": Detail} for status in (400, 401, 408, 413, 415, 503)}

    @router.post("/predict", response_model=PredictResponse, openapi_extra=PREDICT_BODY,
                 responses=errors, tags=["simple API"])
    async def predict(request: Request, response: Response,
                      k: Annotated[int | None, Query(ge=1, le=100)] = None):
        """Classify one image (the body) or several (multipart ``files``): top-k classes."""
        request_id = response.headers[REQUEST_ID_HEADER] = new_request_id()
        with server.batcher.request():
            model = server.model()
            files = await read_images(request, settings)
            images = await server.decode(files, model.input_size, model.image_fit)
            probabilities, model, role = await server.operations.classify(
                images, request_id, server.classify)
        server.operations.answered(request_id, images, [data for _, data in files],
                                   probabilities, model, role)
        best = top_k(probabilities, model.class_names, k or settings.top_k)
        return {"model_name": settings.model_name, "model_version": model.version,
                "request_id": request_id,
                "predictions": [{"file": name, "top_k": b}
                                for (name, _), b in zip(files, best, strict=True)]}

    @router.get("/metadata", response_model=ModelInfo, responses=errors, tags=["simple API"])
    async def metadata():
        """The model served: version, classes, input, and the request limits."""
        model = server.model()
        return ModelInfo(
            model_name=settings.model_name, alias=settings.alias, model_version=model.version,
            class_names=model.class_names, input_shape=[model.input_size] * 2 + [3],
            input_dtype="uint8", image_fit=model.image_fit, engine=model.engine,
            precision=model.precision, loaded_at=model.loaded_at,
            max_images=settings.max_images, max_image_bytes=settings.max_image_bytes,
            max_pixels=settings.max_pixels)


# -- the Open Inference Protocol ------------------------------------------------------------

OIP = "open inference protocol"
OIP_ERRORS = {status: {"model": oip.ErrorMessage} for status in (400, 401, 404, 413, 503)}


def add_oip_metadata(router: APIRouter, server: Server) -> None:
    @router.get("/v2", response_model=oip.ServerMetadata, tags=[OIP])
    async def server_metadata():
        return oip.ServerMetadata(name="image-finetune", version="2",
                                  extensions=["binary_tensor_data"])

    @router.get("/v2/models/{name}", response_model=oip.ModelMetadata, responses=OIP_ERRORS,
                tags=[OIP])
    @router.get("/v2/models/{name}/versions/{version}", response_model=oip.ModelMetadata,
                responses=OIP_ERRORS, tags=[OIP])
    async def model_metadata(name: str, version: str | None = None):
        model = server.model_named(name, version)
        return oip.model_metadata(name, model.version, model.input_size,
                                  len(model.class_names), model.engine, model.precision)

    @router.get("/v2/models/{name}/ready", responses=OIP_ERRORS, tags=[OIP])
    @router.get("/v2/models/{name}/versions/{version}/ready", responses=OIP_ERRORS,
                tags=[OIP])
    async def model_ready(name: str, version: str | None = None) -> dict:
        server.model_named(name, version)
        return {"name": name, "ready": True}


def oip_tensor(body: bytes, header_length: str | None, size: int,
               max_images: int) -> tuple[oip.InferRequest, np.ndarray | list[bytes]]:
    """An infer request and its images: pixels [N,size,size,3], or encoded files (run in the
    decode pool)."""
    request, binary = oip.parse_request(body, header_length)
    return request, oip.input_tensor(request, binary, size, max_images)


def add_oip_inference(router: APIRouter, server: Server) -> None:
    settings = server.settings

    @router.post("/v2/models/{name}/infer", response_model=oip.InferResponse,
                 responses=OIP_ERRORS, openapi_extra=INFER_BODY, tags=[OIP])
    @router.post("/v2/models/{name}/versions/{version}/infer",
                 response_model=oip.InferResponse, responses=OIP_ERRORS,
                 openapi_extra=INFER_BODY, tags=[OIP])
    async def infer(name: str, request: Request, version: str | None = None):
        """Classify a UINT8 ``images`` tensor [N,S,S,3] or BYTES of encoded files [N]."""
        with server.batcher.request():
            model = server.model_named(name, version)
            body = await read_body(request, settings.max_body_bytes,
                                   settings.body_timeout_seconds)
            parsed, images = await server.off_loop(
                oip_tensor, body, request.headers.get(oip.HEADER_LENGTH), model.input_size,
                settings.max_images)
            del body  # its images are parsed out: free it before they are decoded
            if not isinstance(images, np.ndarray):
                images = await server.decode(
                    [(f"{oip.INPUT}[{i}]", data) for i, data in enumerate(images)],
                    model.input_size, model.image_fit)
            request_id = new_request_id()
            probabilities, model, role = await server.operations.classify(
                images, request_id, server.classify)
        server.operations.answered(request_id, images, None, probabilities, model, role)
        content, header_length = await server.off_loop(
            oip.infer_response, parsed, name, model.version, probabilities, model.class_names)
        if header_length is None:
            return Response(content, media_type="application/json",
                            headers={REQUEST_ID_HEADER: request_id})
        return Response(content, media_type="application/octet-stream",
                        headers={oip.HEADER_LENGTH: str(header_length),
                                 REQUEST_ID_HEADER: request_id})
