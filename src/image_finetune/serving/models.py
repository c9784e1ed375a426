"""The served model: ``models:/<name>@<alias>``, loaded in the background, retried while the
registry cannot be reached (the server stays up and unready), and swapped without a gap
when the alias moves. A version registered with an engine folder is served on the chosen
fast engine (ONNX Runtime or OpenVINO: no TensorFlow in the process); one without, or with
engine ``tensorflow``, on Keras as it was trained."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from image_finetune.config import RegistryParams
from image_finetune.engines import KERAS_ENGINE
from image_finetune.errors import MissingExtraError, PipelineError
from image_finetune.inference import class_names_or_indices, model_input_size
from image_finetune.registry.client import client_for
from image_finetune.registry.versions import (
    download_engine,
    download_model,
    download_reference_profile,
    registered_class_names,
    registered_fit,
    version_by_alias,
)
from image_finetune.serving.settings import ServeSettings

if TYPE_CHECKING:  # loaded only for a monitored version (attach_reference)
    from image_finetune.monitoring.profile import ReferenceProfile

log = logging.getLogger(__name__)


class MissingModelError(LookupError):
    """The registry has no version under the served alias."""


class PrecisionError(ValueError):
    """The precision asked for is not one the version may serve at."""


class PredictsBatches(Protocol):
    """A Keras model or an engine's Predictor (or a summaries model, giving two outputs)."""

    def predict_on_batch(self, images: np.ndarray) -> Any: ...


@dataclass
class LoadedModel:
    """One model version, ready to predict."""

    model: PredictsBatches  # a Keras model or an engine's Predictor (uint8 images)
    version: str
    class_names: list[str]
    input_size: int
    image_fit: str  # how images of another size are fitted (as in training)
    engine: str = KERAS_ENGINE  # what computes the answers
    precision: str = "fp32"
    loaded_at: float = field(default_factory=time.time)
    # Drift monitoring: the version's reference profile and the model giving probabilities
    # and the projected pooled embedding in one pass (None: not monitored).
    profile: ReferenceProfile | None = None
    summaries: PredictsBatches | None = None

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (float32) for a uint8 batch."""
        return np.asarray(self.model.predict_on_batch(images), dtype=np.float32)

    def answer(self, images: np.ndarray) -> np.ndarray:
        """What the server computes per image: the class probabilities, followed, for a
        monitored model, by the projected embedding (one forward pass for both)."""
        if self.summaries is None:
            return self.predict(images)
        probabilities, projected = self.summaries.predict_on_batch(images)
        return np.concatenate(
            [np.asarray(probabilities, dtype=np.float32), np.asarray(projected, dtype=np.float32)],
            axis=1,
        )

    def split(self, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, projected embedding or None) of ``answer``'s rows."""
        classes = len(self.class_names)
        return outputs[:, :classes], outputs[:, classes:] if self.summaries else None

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Trace the model at these batch sizes, so the first requests are not the slow ones."""
        for size in batch_sizes:
            self.answer(np.zeros((size, self.input_size, self.input_size, 3), np.uint8))


def load_version(
    registry: RegistryParams, version, engine: str = "auto", precision: str = "auto"
) -> LoadedModel:
    """Load one registered version, with its class names: on ``engine`` (resolved by
    engines.resolve_engine) from its engine folder where it has one, else on Keras. The
    artifacts are downloaded into a temporary folder that is gone once the model is in
    memory: reloads leave nothing."""
    from image_finetune.engines import open_predictor, read_manifest, resolve_engine

    chosen = resolve_engine(engine)
    client = client_for(registry)
    with tempfile.TemporaryDirectory(prefix="image-finetune-model-") as work:
        folder = (
            download_engine(client, registry.model_name, version.version, Path(work) / "engine")
            if chosen != KERAS_ENGINE
            else None
        )
        if folder is None:
            model = _keras_model(client, registry, version, work, precision)
            served, at = KERAS_ENGINE, "fp32"
        else:
            at = served_precision(read_manifest(folder), precision, str(version.version))
            model = open_predictor(folder, engine, at)  # auto: the folder's own engine
            served, at = model.engine, model.precision
    names = class_names_or_indices(registered_class_names(version), model)
    return LoadedModel(
        model,
        str(version.version),
        names,
        model_input_size(model),
        registered_fit(version),
        engine=served,
        precision=at,
    )


class KerasMissingError(PipelineError):
    """A version that only Keras can serve, in an install without it (the serve extra); a
    usage error, as a missing extra is."""

    exit_code = MissingExtraError.exit_code


def _keras_model(client, registry: RegistryParams, version, work: str, precision: str):
    try:
        import keras  # noqa: F401
        import mlflow.keras  # noqa: F401
    except ImportError as exc:
        raise KerasMissingError(
            f"v{version.version} has no engine folder (registered before engines, or without "
            f"the export-engine step) and this install has no Keras ({exc.name} is missing): "
            "serve it from an install with the train extra, or register it with its engine "
            "folder"
        ) from exc
    if precision == "int8":
        log.warning("v%s has no engine folder: served on Keras in fp32, not int8", version.version)
    local = download_model(
        client, registry.tracking_uri, registry.model_name, version.version, work
    )
    return mlflow.keras.load_model(local)


def served_precision(manifest: dict, requested: str, version: str) -> str:
    """The precision a version's engine serves at: ``auto`` is the manifest's
    ``serving_precision``; int8 only where the manifest found the int8 variant servable
    (evaluated beside fp32 on the whole test split and passing the accuracy rule)."""
    if requested == "auto":
        return manifest.get("serving_precision", "fp32")
    if requested == "int8":
        int8 = manifest.get("int8") or {}
        if not int8.get("servable"):
            raise PrecisionError(
                f"v{version} has no servable int8 variant "
                f"({int8.get('reason') or 'none was made'}); serve it in "
                "fp32 or auto"
            )
    return requested


def attach_reference(loaded: LoadedModel, registry: RegistryParams) -> None:
    """Give a loaded version its reference profile and its one-pass summaries model, when it
    was registered with a profile (older versions are served unmonitored)."""
    from image_finetune.monitoring.profile import ReferenceProfile

    with tempfile.TemporaryDirectory(prefix="image-finetune-profile-") as work:
        folder = download_reference_profile(
            client_for(registry), registry.model_name, loaded.version, work
        )
        if folder is None:
            log.warning(
                "v%s has no reference profile: served without drift monitoring", loaded.version
            )
            return
        loaded.profile = profile = ReferenceProfile.load(folder)
    if profile.precision != loaded.precision:  # fp32 engines agree to 1e-4; int8 does not
        log.warning(
            "v%s serves on %s %s but its reference profile was summarised on %s %s: the "
            "drift tests compare unlike summaries and may flag the difference itself",
            loaded.version,
            loaded.engine,
            loaded.precision,
            profile.engine,
            profile.precision,
        )
    loaded.summaries = summaries_model(loaded, profile)


def summaries_model(loaded: LoadedModel, profile: ReferenceProfile):
    """What gives a monitored version's probabilities and projected embedding in one pass:
    on Keras, the classifier's own layers with the projection inside the graph; on an
    engine, its ``embedding`` output projected without BLAS (ProjectedOutputs). None where
    the engine's graph has no embedding."""
    from image_finetune.monitoring.summaries import embedding_model, projecting_model

    mean, components = profile.mean, profile.components
    if loaded.engine == KERAS_ENGINE:
        return projecting_model(embedding_model(loaded.model), mean, components)
    outputs = ProjectedOutputs(loaded.model, mean, components)
    if not outputs.available():
        log.warning(
            "v%s's %s graph has no embedding output: served without drift monitoring",
            loaded.version,
            loaded.engine,
        )
        loaded.profile = None
        return None
    return outputs


class ProjectedOutputs:
    """An engine's Predictor giving ``(probabilities [N, C], projected [N, k])`` in one pass:
    its ``embedding`` output minus ``mean``, on the rows of ``components`` (what
    ReferenceProfile.project computes).

    The projection is ``np.einsum`` without ``optimize``: numpy's own loops, never BLAS. A
    BLAS product leaves OpenBLAS's threads spinning after each call beside the engine's, and
    on 2 cores that cost the Keras server a third of its throughput (commit bd2d2ca; that
    path projects inside its graph). The product is tiny (a batch of a few dozen rows,
    D x k), so numpy's loops lose nothing (measured: bench/serve_projection.py)."""

    def __init__(self, predictor, mean: np.ndarray, components: np.ndarray):
        self.predictor = predictor
        self.mean = np.asarray(mean, np.float32)
        self.components = np.asarray(components, np.float32)

    def available(self) -> bool:
        """Whether the engine's graph gives the embedding the projection needs."""
        from image_finetune.engines import EMBEDDING

        probe = np.zeros((1, *self.predictor.input_shape), np.uint8)
        return EMBEDDING in self.predictor.outputs(probe)

    def predict_on_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from image_finetune.engines import EMBEDDING, PROBABILITIES

        outputs = self.predictor.outputs(images)
        return outputs[PROBABILITIES], project_without_blas(
            outputs[EMBEDDING], self.mean, self.components
        )


def project_without_blas(
    embedding: np.ndarray, mean: np.ndarray, components: np.ndarray
) -> np.ndarray:
    """ReferenceProfile.project's ``(embedding - mean) @ components.T`` (float32 [N, k]) by
    numpy's own einsum loops: no BLAS call, so no BLAS threads left spinning."""
    centred = np.asarray(embedding, np.float32) - mean
    return np.einsum("nd,kd->nk", centred, components, optimize=False)


class ModelHolder:
    """The model being served, kept current by a background thread."""

    monitored = True  # loads each version's reference profile when monitoring is on

    def __init__(self, settings: ServeSettings, on_failure: Callable[[], None] = lambda: None):
        self.settings = settings
        self.registry = RegistryParams(
            tracking_uri=settings.tracking_uri, model_name=settings.model_name
        )
        self.on_failure = on_failure  # called on every failed load or refresh
        self.current: LoadedModel | None = None
        self.problem: str | None = "not loaded yet"  # why there is no model (None: served)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def target(self):
        """The version the alias points at now; MissingModelError where there is none."""
        version = version_by_alias(
            client_for(self.registry), self.registry.model_name, self.settings.alias
        )
        if version is None:
            raise MissingModelError(
                f"{self.registry.model_name} has no version with alias "
                f"{self.settings.alias!r} (yet)"
            )
        return version

    def refresh(self) -> bool:
        """Load the alias' version unless it is the one served; True when it was loaded."""
        version = self.target()
        if self.current and self.current.version == str(version.version):
            return False
        loaded = load_version(self.registry, version, self.settings.engine, self.settings.precision)
        if self.monitored and self.settings.operate.monitor:
            attach_reference(loaded, self.registry)
        loaded.warm_up((1, self.settings.max_batch_size))
        self.current, self.problem = loaded, None  # one assignment: requests see old or new
        log.info("serving %s v%s", self.settings.model_name, loaded.version)
        return True

    def start(self) -> None:
        """Load and keep polling in a daemon thread; the server answers meanwhile."""
        self._thread = threading.Thread(target=self._keep_current, name="model-holder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()

    def _keep_current(self) -> None:
        import_model_libraries(self.settings.engine)
        while not self._stop.is_set():
            try:
                self.refresh()
                wait = self.settings.poll_seconds
            except Exception as exc:  # the registry away, a bad version: never fatal
                wait = self.settings.retry_seconds
                self._note_problem(exc)
            self._stop.wait(wait)

    def _note_problem(self, exc: Exception) -> None:
        self.on_failure()
        message = f"{type(exc).__name__}: {exc}"
        if self.current is None:
            self.problem = message
            log.warning(
                "no model to serve yet, retrying in %.0f s: %s",
                self.settings.retry_seconds,
                message,
            )
        else:
            log.warning(
                "refreshing the model failed; still serving v%s: %s", self.current.version, message
            )


def import_model_libraries(engine: str) -> None:
    """Import MLflow and the engine (Keras where it serves: tens of seconds on a small
    machine) before the first look at the registry, so that a server waiting for its
    registry is ready soon after it returns. A version without an engine folder imports
    Keras when it loads."""
    try:
        import mlflow  # noqa: F401

        from image_finetune.engines import resolve_engine

        if resolve_engine(engine) == KERAS_ENGINE:
            import keras  # noqa: F401
            import mlflow.keras  # noqa: F401
    except ImportError:  # reported, with the reason, by the first load
        log.exception("importing the model libraries failed")
