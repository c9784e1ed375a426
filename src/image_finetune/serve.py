"""Online and batch inference with the champion model.

The HTTP service loads ``models:/<name>@champion`` at start, polls the alias and swaps
in a new version without downtime when it moves. Images of any size are decoded and
resized exactly as the ingest step does (``data.sources.decode_image``).
"""

import csv
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from image_finetune.data.sources import IMAGE_SUFFIXES, _iter_folder_files, decode_image
from image_finetune.errors import MissingInputError

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


def top_k(probabilities: np.ndarray, class_names: list[str], k: int) -> list[list[dict]]:
    """The k most probable classes of each row, most probable first."""
    order = np.argsort(-probabilities, axis=1)[:, :k]
    return [[{"class": class_names[i], "probability": round(float(row[i]), 6)} for i in best]
            for row, best in zip(probabilities, order, strict=True)]


def registered_class_names(version) -> list[str] | None:
    """The class names a registered version carries in its tags (None: not recorded)."""
    names = version.tags.get("class_names")
    return json.loads(names) if names else None


def load_version(model_name: str, version) -> LoadedModel:
    """Load one registered version, with its class names."""
    import mlflow

    model = mlflow.keras.load_model(f"models:/{model_name}/{version.version}")
    class_names = registered_class_names(version) or [
        str(i) for i in range(int(model.output_shape[-1]))]
    return LoadedModel(model, str(version.version), class_names, int(model.input_shape[1]))


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
        from image_finetune.config import RegistryParams
        from image_finetune.registry import _client, _version_by_alias

        client = _client(RegistryParams(tracking_uri=self.settings.tracking_uri,
                                        model_name=self.settings.model_name))
        return _version_by_alias(client, self.settings.model_name, self.settings.alias)

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


def create_app(settings: ServeSettings, holder: ChampionHolder | None = None):
    """The FastAPI application: /predict, /healthz, /readyz, /metadata, /metrics."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Histogram,
        generate_latest,
    )

    holder = holder or ChampionHolder(settings)
    registry = CollectorRegistry()
    requests_total = Counter("predict_requests_total", "Prediction requests", ["status"],
                             registry=registry)
    images_total = Counter("predict_images_total", "Images classified", registry=registry)
    latency = Histogram("predict_latency_seconds", "Prediction request latency",
                        registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    @asynccontextmanager
    async def lifespan(_app):
        holder.load()
        holder.start_polling()
        yield
        holder.stop()

    app = FastAPI(title="image-finetune", lifespan=lifespan)

    def reject(status: int, message: str):
        requests_total.labels(status=str(status)).inc()
        raise HTTPException(status_code=status, detail=message)

    async def read_images(request: Request) -> list[tuple[str, bytes]]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            form = await request.form(max_files=settings.max_batch + 1)
            uploads = form.getlist("files") + form.getlist("file")
            if len(uploads) > settings.max_batch:
                reject(413, f"too many images: at most {settings.max_batch} per request")
            return [(u.filename or f"file{i}", await u.read()) for i, u in enumerate(uploads)]
        if content_type in ("image/png", "image/jpeg", "application/octet-stream"):
            return [("body", await request.body())]
        reject(415, f"unsupported content type {content_type or '(none)'!r}: send image/png, "
                    "image/jpeg, or multipart/form-data with one or more 'files'")
        return []

    @app.post("/predict")
    async def predict(request: Request, k: int | None = None):
        start = time.perf_counter()
        model = holder.current
        if model is None:
            reject(503, "no model loaded yet")
        files = await read_images(request)
        if not files:
            reject(400, "no image in the request")
        images = []
        for name, data in files:
            if not data:
                reject(400, f"{name}: empty body")
            if len(data) > settings.max_image_bytes:
                reject(413, f"{name}: {len(data)} bytes, over the limit of "
                            f"{settings.max_image_bytes}")
            try:
                images.append(decode_image(data, name, model.input_size, resize=True))
            except ValueError as exc:
                reject(400, str(exc))
        probabilities = model.predict(np.stack(images))
        requests_total.labels(status="200").inc()
        images_total.inc(len(images))
        latency.observe(time.perf_counter() - start)
        return {"model_name": settings.model_name, "model_version": model.version,
                "predictions": [{"file": name, "top_k": best} for (name, _), best in zip(
                    files, top_k(probabilities, model.class_names, k or settings.top_k),
                    strict=True)]}

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

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.state.holder = holder
    return app


def predict_folder(
    model_uri: str, source: Path, out_csv: Path, batch_size: int = 256, k: int = 3,
    class_names: list[str] | None = None,
) -> int:
    """Batch inference over a folder or archive of images; write a CSV, return the count.

    Unreadable files are listed in the CSV with their error, never silently dropped.
    """
    from tqdm import tqdm

    model, registered_names = _load_for_batch(model_uri)
    size = int(model.input_shape[1])
    names = class_names or registered_names or [
        str(i) for i in range(int(model.output_shape[-1]))]
    rows: list[dict] = []
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        probabilities = np.asarray(model.predict_on_batch(np.stack([a for _, a in pending])))
        for (name, _), best in zip(pending, top_k(probabilities, names, k), strict=True):
            rows.append({"file": name, "predicted": best[0]["class"],
                         "probability": best[0]["probability"],
                         "top_k": " ".join(f"{b['class']}:{b['probability']:.4f}" for b in best),
                         "error": ""})
        pending.clear()

    for rel, data in tqdm(_iter_folder_files(source), desc="predict", unit="img"):
        if data is None or Path(str(rel)).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            pending.append((str(rel), decode_image(data, str(rel), size, resize=True)))
        except ValueError as exc:
            rows.append({"file": str(rel), "predicted": "", "probability": "", "top_k": "",
                         "error": str(exc)})
        if len(pending) >= batch_size:
            flush()
    flush()
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file", "predicted", "probability", "top_k", "error"])
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["file"]))
    return len(rows)


def _load_for_batch(model_uri: str) -> tuple[object, list[str] | None]:
    """The model behind a URI or file, with the class names its registry version carries."""
    if not model_uri.startswith(("models:/", "runs:/")):
        from image_finetune.train import load_classifier

        return load_classifier(Path(model_uri)), None
    import mlflow

    model = mlflow.keras.load_model(model_uri)
    if not model_uri.startswith("models:/"):
        return model, None
    name, _, ref = model_uri.removeprefix("models:/").replace("@", "/@").partition("/")
    client = mlflow.MlflowClient()
    version = (client.get_model_version_by_alias(name, ref[1:]) if ref.startswith("@")
               else client.get_model_version(name, ref))
    return model, registered_class_names(version)


def export_saved_model(model_path: Path, out_dir: Path) -> Path:
    """A TF Serving SavedModel whose ``serving_default`` signature takes uint8 images."""
    import keras
    import tensorflow as tf  # TensorFlow-only: imported where used

    from image_finetune.train import load_classifier

    model = load_classifier(model_path)
    archive = keras.export.ExportArchive()
    archive.track(model)
    # training=False spelled out: Keras' random augmentation layers default to training mode
    # when called without it, which is what a plain model.export() does.
    archive.add_endpoint(
        "serving_default", lambda images: model(images, training=False),
        input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.uint8, name="image")])
    archive.write_out(str(out_dir), verbose=False)
    return out_dir
