"""The HTTP service: serves ``models:/<name>@<alias>``, polls the alias and swaps in a new
version without downtime when it moves. Images of any size are decoded and resized exactly
as the ingest step does (``data.sources.decode_image``)."""

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from image_finetune.config import RegistryParams
from image_finetune.data.sources import decode_image
from image_finetune.errors import MissingInputError
from image_finetune.inference import class_names_or_indices, top_k
from image_finetune.registry.client import client_for
from image_finetune.registry.versions import registered_class_names, version_by_alias

log = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    """Limits and behaviour of the HTTP service."""

    model_name: str
    tracking_uri: str
    alias: str = "champion"
    top_k: int = 3
    max_image_bytes: int = 5 * 1024 * 1024
    max_batch: int = 64
    poll_seconds: float = 30.0


@dataclass
class LoadedModel:
    """One model version, ready to predict."""

    model: object
    version: str
    class_names: list[str]
    input_size: int
    loaded_at: float = field(default_factory=time.time)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities for a uint8 batch."""
        return np.asarray(self.model.predict_on_batch(images))


def load_version(model_name: str, version) -> LoadedModel:
    """Load one registered version, with its class names."""
    import mlflow

    model = mlflow.keras.load_model(f"models:/{model_name}/{version.version}")
    names = class_names_or_indices(registered_class_names(version), model)
    return LoadedModel(model, str(version.version), names, int(model.input_shape[1]))


class ChampionHolder:
    """The served model; a poller swaps in the alias' new version, never leaving a gap."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.current: LoadedModel | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _target(self):
        """The version the alias points at now (None: no such alias)."""
        client = client_for(RegistryParams(tracking_uri=self.settings.tracking_uri,
                                           model_name=self.settings.model_name))
        return version_by_alias(client, self.settings.model_name, self.settings.alias)

    def load(self, version=None) -> LoadedModel:
        """Load ``version`` (default: the alias' version now) and serve it."""
        version = version or self._target()
        if version is None:
            raise MissingInputError(
                f"{self.settings.model_name} has no version with alias {self.settings.alias!r}")
        loaded = load_version(self.settings.model_name, version)
        with self._lock:
            self.current = loaded
        log.info("serving %s v%s", self.settings.model_name, loaded.version)
        return loaded

    def refresh(self) -> bool:
        """Swap in the alias' version if it moved; True when it did."""
        target = self._target()
        if target is None or (self.current and self.current.version == str(target.version)):
            return False
        self.load(target)
        return True

    def start_polling(self) -> None:
        """Poll the alias every ``poll_seconds`` in a daemon thread."""
        def loop() -> None:
            while not self._stop.wait(self.settings.poll_seconds):
                try:
                    self.refresh()
                except Exception:  # a failed poll must never take the service down
                    log.exception("refreshing the model failed; still serving the old one")

        self._thread = threading.Thread(target=loop, name="champion-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()


class Metrics:
    """The service's Prometheus metrics, in a registry of their own."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("predict_requests_total", "Prediction requests", ["status"],
                                registry=self.registry)
        self.images = Counter("predict_images_total", "Images classified",
                              registry=self.registry)
        self.latency = Histogram("predict_latency_seconds", "Prediction request latency",
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


class Rejected(Exception):
    """A request refused with an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def read_images(request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image in a request: one raw image body, or multipart files."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=settings.max_batch + 1)
        uploads = form.getlist("files") + form.getlist("file")
        if len(uploads) > settings.max_batch:
            raise Rejected(413, f"too many images: at most {settings.max_batch} per request")
        return [(u.filename or f"file{i}", await u.read()) for i, u in enumerate(uploads)]
    if content_type in ("image/png", "image/jpeg", "application/octet-stream"):
        return [("body", await request.body())]
    raise Rejected(415, f"unsupported content type {content_type or '(none)'!r}: send "
                        "image/png, image/jpeg, or multipart/form-data with one or more 'files'")


def decode_all(files: list[tuple[str, bytes]], settings: ServeSettings, size: int) -> np.ndarray:
    """The request's images as one uint8 batch; Rejected on the first bad one."""
    if not files:
        raise Rejected(400, "no image in the request")
    images = []
    for name, data in files:
        if not data:
            raise Rejected(400, f"{name}: empty body")
        if len(data) > settings.max_image_bytes:
            raise Rejected(413, f"{name}: {len(data)} bytes, over the limit of "
                                f"{settings.max_image_bytes}")
        try:
            images.append(decode_image(data, name, size, resize=True))
        except ValueError as exc:
            raise Rejected(400, str(exc)) from exc
    return np.stack(images)


def create_app(settings: ServeSettings, holder: ChampionHolder | None = None):
    """The FastAPI application: /predict, /healthz, /readyz, /metadata, /metrics."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    holder = holder or ChampionHolder(settings)

    @asynccontextmanager
    async def lifespan(_app):
        holder.load()
        holder.start_polling()
        yield
        holder.stop()

    app = FastAPI(title="image-finetune", lifespan=lifespan)
    _add_prediction(app, settings, holder, Metrics())
    _add_status(app, settings, holder)
    app.state.holder = holder
    return app


def _add_prediction(app, settings: ServeSettings, holder: ChampionHolder, metrics: Metrics):
    from fastapi import HTTPException, Request
    from fastapi.responses import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    @app.post("/predict")
    async def predict(request: Request, k: int | None = None):
        start = time.perf_counter()
        try:
            model = holder.current
            if model is None:
                raise Rejected(503, "no model loaded yet")
            files = await read_images(request, settings)
            probabilities = model.predict(decode_all(files, settings, model.input_size))
        except Rejected as exc:
            metrics.requests.labels(status=str(exc.status)).inc()
            raise HTTPException(status_code=exc.status, detail=str(exc)) from exc
        metrics.requests.labels(status="200").inc()
        metrics.images.inc(len(files))
        metrics.latency.observe(time.perf_counter() - start)
        best = top_k(probabilities, model.class_names, k or settings.top_k)
        return {"model_name": settings.model_name, "model_version": model.version,
                "predictions": [{"file": name, "top_k": b}
                                for (name, _), b in zip(files, best, strict=True)]}

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_status(app, settings: ServeSettings, holder: ChampionHolder):
    from fastapi.responses import JSONResponse

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        if holder.current is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ready", "model_version": holder.current.version}

    @app.get("/metadata")
    def metadata():
        model = holder.current
        if model is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"model_name": settings.model_name, "alias": settings.alias,
                "model_version": model.version, "class_names": model.class_names,
                "input_shape": [model.input_size, model.input_size, 3], "input_dtype": "uint8",
                "loaded_at": model.loaded_at, "max_batch": settings.max_batch,
                "max_image_bytes": settings.max_image_bytes}
