"""The served model: ``models:/<name>@<alias>``, loaded in the background, retried while the
registry cannot be reached (the server stays up and unready), and swapped without a gap
when the alias moves."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from image_finetune.config import RegistryParams
from image_finetune.inference import class_names_or_indices
from image_finetune.registry.client import client_for
from image_finetune.registry.versions import (
    download_model,
    download_reference_profile,
    registered_class_names,
    registered_fit,
    version_by_alias,
)
from image_finetune.serving.settings import ServeSettings

log = logging.getLogger(__name__)


class MissingModelError(LookupError):
    """The registry has no version under the served alias."""


@dataclass
class LoadedModel:
    """One model version, ready to predict."""

    model: object
    version: str
    class_names: list[str]
    input_size: int
    image_fit: str  # how images of another size are fitted (as in training)
    loaded_at: float = field(default_factory=time.time)
    # Drift monitoring: the version's reference profile and the model giving probabilities
    # and the pooled embedding in one pass (None: not monitored).
    profile: object | None = None
    summaries: object | None = None

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (float32) for a uint8 batch."""
        return np.asarray(self.model.predict_on_batch(images), dtype=np.float32)

    def answer(self, images: np.ndarray) -> np.ndarray:
        """What the server computes per image: the class probabilities, followed, for a
        monitored model, by the projected embedding (one forward pass for both)."""
        if self.summaries is None:
            return self.predict(images)
        probabilities, projected = self.summaries.predict_on_batch(images)
        return np.concatenate([np.asarray(probabilities, dtype=np.float32),
                               np.asarray(projected, dtype=np.float32)], axis=1)

    def split(self, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, projected embedding or None) of ``answer``'s rows."""
        classes = len(self.class_names)
        return outputs[:, :classes], outputs[:, classes:] if self.summaries else None

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Trace the model at these batch sizes, so the first requests are not the slow ones."""
        for size in batch_sizes:
            self.answer(np.zeros((size, self.input_size, self.input_size, 3), np.uint8))


def load_version(registry: RegistryParams, version) -> LoadedModel:
    """Load one registered version, with its class names. The artifacts are downloaded into
    a temporary folder that is gone once the model is in memory: reloads leave nothing."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="image-finetune-model-") as work:
        local = download_model(client_for(registry), registry.tracking_uri,
                               registry.model_name, version.version, work)
        model = mlflow.keras.load_model(local)
    names = class_names_or_indices(registered_class_names(version), model)
    return LoadedModel(model, str(version.version), names, int(model.input_shape[1]),
                       registered_fit(version))


def attach_reference(loaded: LoadedModel, registry: RegistryParams) -> None:
    """Give a loaded version its reference profile and its one-pass summaries model, when it
    was registered with a profile (older versions are served unmonitored)."""
    from image_finetune.monitoring.profile import ReferenceProfile
    from image_finetune.monitoring.summaries import embedding_model, projecting_model

    with tempfile.TemporaryDirectory(prefix="image-finetune-profile-") as work:
        folder = download_reference_profile(client_for(registry), registry.model_name,
                                            loaded.version, work)
        if folder is None:
            log.warning("v%s has no reference profile: served without drift monitoring",
                        loaded.version)
            return
        loaded.profile = ReferenceProfile.load(folder)
    loaded.summaries = projecting_model(embedding_model(loaded.model), loaded.profile.mean,
                                        loaded.profile.components)


class ModelHolder:
    """The model being served, kept current by a background thread."""

    monitored = True  # loads each version's reference profile when monitoring is on

    def __init__(self, settings: ServeSettings, on_failure: Callable[[], None] = lambda: None):
        self.settings = settings
        self.registry = RegistryParams(tracking_uri=settings.tracking_uri,
                                       model_name=settings.model_name)
        self.on_failure = on_failure  # called on every failed load or refresh
        self.current: LoadedModel | None = None
        self.problem = "not loaded yet"  # why there is no model (None once one is served)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def target(self):
        """The version the alias points at now; MissingModelError where there is none."""
        version = version_by_alias(client_for(self.registry), self.registry.model_name,
                                   self.settings.alias)
        if version is None:
            raise MissingModelError(f"{self.registry.model_name} has no version with alias "
                                    f"{self.settings.alias!r} (yet)")
        return version

    def refresh(self) -> bool:
        """Load the alias' version unless it is the one served; True when it was loaded."""
        version = self.target()
        if self.current and self.current.version == str(version.version):
            return False
        loaded = load_version(self.registry, version)
        if self.monitored and self.settings.operate.monitor:
            attach_reference(loaded, self.registry)
        loaded.warm_up((1, self.settings.max_batch_size))
        self.current, self.problem = loaded, None  # one assignment: requests see old or new
        log.info("serving %s v%s", self.settings.model_name, loaded.version)
        return True

    def start(self) -> None:
        """Load and keep polling in a daemon thread; the server answers meanwhile."""
        self._thread = threading.Thread(target=self._keep_current, name="model-holder",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()

    def _keep_current(self) -> None:
        import_model_libraries()
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
            log.warning("no model to serve yet, retrying in %.0f s: %s",
                        self.settings.retry_seconds, message)
        else:
            log.warning("refreshing the model failed; still serving v%s: %s",
                        self.current.version, message)


def import_model_libraries() -> None:
    """Import MLflow and Keras (tens of seconds on a small machine) before the first look at
    the registry, so that a server waiting for its registry is ready soon after it returns."""
    try:
        import keras  # noqa: F401
        import mlflow.keras  # noqa: F401
    except ImportError:  # reported, with the reason, by the first load
        log.exception("importing the model libraries failed")
