"""Drift monitoring inside the server: each image the champion answers may add its summaries
(class probabilities, the projected pooled embedding, four image statistics; never the
image) to a window; a full window (``IMAGE_FINETUNE_MONITOR_WINDOW`` images, or at least
``MIN_WINDOW`` once ``IMAGE_FINETUNE_MONITOR_MAX_SECONDS`` have passed) is tested against
the served version's reference profile, and the results become metrics and
``GET /monitoring``.

Nothing here runs on the request path. The micro-batcher hands each model call's rows over
once its answers are out (one hand-off per batch, not per request): ``add`` samples them and
puts the sampled rows in a bounded queue; one thread computes their image statistics and fills
the window, and the tests run in a process of their own at the lowest CPU priority with one
BLAS thread (in a thread they would hold the GIL the answers need; with a BLAS thread per
core they would spin beside the answers).

Under load a fixed share of the answered images is sampled into the windows (uniformly at
random, seeded), never a burst followed by a gap: after each test the share is set so that
testing (the tester's CPU time and the monitor thread's) takes at most ``monitor_cpu_share``
of one core at the arrival rate just seen. The share is a metric
(``image_finetune_monitor_sample_share``); images left out by it are counted
(``image_finetune_monitor_skipped_total``), and so are the rare ones dropped because the
queue was full (``image_finetune_monitor_dropped_total``), never waited for. Memory is fixed:
the queue holds at most ``MAX_QUEUED`` hand-offs (each at most ``max_batch_size`` images),
the window at most ``window`` images' summaries, and at most ``monitor_record_max`` recorded
windows stay on disk."""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from image_finetune.monitoring.drift import MIN_WINDOW, TESTS, Window, test_window
from image_finetune.monitoring.summaries import image_statistics
from image_finetune.serving.models import LoadedModel
from image_finetune.serving.operate_metrics import OperateMetrics
from image_finetune.serving.settings import OperateSettings

if TYPE_CHECKING:
    from image_finetune.monitoring.profile import ReferenceProfile

log = logging.getLogger(__name__)
MAX_QUEUED = 64  # hand-offs waiting for the monitor thread
OVERALL = "overall"
RECORD_PREFIX = "window-"
MONITOR_NICENESS = 19
MIN_SHARE = 0.001  # the sampled share never falls below this: a window still fills


class Sampler:
    """Which answered images enter the window: each with probability ``share`` (seeded), and
    the arrival rate that sets it. ``pick`` runs on the batcher's thread, ``retune`` on the
    monitor's (a count lost between the two only nudges the next share)."""

    def __init__(self, seed: int = 0):
        self.share = 1.0
        self.seen = 0  # images offered since the last ``retune``
        self.since = time.monotonic()
        self._rng = np.random.default_rng(seed)

    def pick(self, count: int) -> np.ndarray | None:
        """Indices of the sampled images among ``count`` (None: all of them)."""
        self.seen += count
        if self.share >= 1.0:
            return None
        return np.flatnonzero(self._rng.random(count) < self.share)

    def retune(self, cpu_seconds: float, window: int, cpu_share: float) -> float:
        """Set the share so that testing windows of ``window`` images, each costing
        ``cpu_seconds``, takes at most ``cpu_share`` of a core at the rate seen since the
        last call; return it."""
        now = time.monotonic()
        rate = self.seen / max(now - self.since, 1e-3)  # images offered per second
        self.seen, self.since = 0, now
        if cpu_seconds > 0 and rate > 0:
            affordable = cpu_share * window / cpu_seconds  # images per second to test
            self.share = float(min(1.0, max(MIN_SHARE, affordable / rate)))
        return self.share


def _profile(model: LoadedModel) -> ReferenceProfile:
    """A monitored version's reference profile (the server hands only those to the monitor)."""
    if model.profile is None:
        raise ValueError(f"v{model.version} has no reference profile: it is not monitored")
    return model.profile


class Monitor:
    """Windows of live summaries per served version, tested on a thread of their own."""

    def __init__(self, settings: OperateSettings, metrics: OperateMetrics):
        self.settings, self.metrics = settings, metrics
        self.window: Window | None = None
        self.model: LoadedModel | None = None  # whose answers fill the window
        self.window_started = time.time()
        self.last: dict | None = None  # the last tested window's result
        self.windows_tested = 0
        self.sampler = Sampler()
        self._window_cpu = 0.0  # the monitor thread's CPU seconds on the current window
        self._queue: queue.Queue = queue.Queue(MAX_QUEUED)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="drift-monitor", daemon=True)
        self._tester: ProcessPoolExecutor | None = None

    def start(self) -> None:
        if self.settings.monitor:
            self._tester = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=lower_priority
            )  # spawn: never fork a TF process
            # Started now, while the model loads: its interpreter, numpy and scipy would
            # otherwise start beside the answers, at the first full window.
            self._tester.submit(os.getpid)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._tester is not None:
            self._tester.shutdown(wait=False, cancel_futures=True)

    def add(
        self,
        model: LoadedModel,
        images: np.ndarray,
        probabilities: np.ndarray,
        projected: np.ndarray | None,
    ) -> None:
        """Sample a model call's answers and queue the sampled rows (O(1) in the rows not
        sampled; dropped and counted when the queue is full)."""
        if not self.settings.monitor or projected is None or model.profile is None:
            return
        picked = self.sampler.pick(len(images))
        if picked is not None:
            skipped = len(images) - len(picked)
            if skipped:
                self.metrics.monitor_skipped.labels(model.version).inc(skipped)
            if not len(picked):
                return
            images, probabilities, projected = (
                images[picked],
                probabilities[picked],
                projected[picked],
            )
        try:
            self._queue.put_nowait((model, images, probabilities, projected))
        except queue.Full:
            self.metrics.monitor_dropped.labels(model.version).inc(len(images))

    def add_answers(self, images: np.ndarray, outputs: np.ndarray, model: LoadedModel) -> None:
        """The micro-batcher's hand-off: a model call's images and ``answer`` rows."""
        if isinstance(model, LoadedModel):
            self.add(model, images, *model.split(outputs))

    def _work(self) -> None:
        while not self._stop.is_set():
            items = self._drain()
            try:
                for model, images, probabilities, projected in joined_by_model(items):
                    self._append(model, images, probabilities, projected)
                self._test_if_due()
            except Exception:  # a failed window never stops monitoring
                log.exception("drift monitoring failed on a window; starting a new one")
                self._new_window(self.model)

    def _drain(self) -> list[tuple]:
        """What is queued (waiting up to a second for the first): one request's answers at a
        time would cost the answers' thread their interpreter lock once per request."""
        try:
            items = [self._queue.get(timeout=1.0)]
        except queue.Empty:
            return []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _new_window(self, model: LoadedModel | None) -> None:
        self.model = model
        self.window = (
            Window.empty(_profile(model).dimensions, len(model.class_names))
            if model is not None
            else None
        )
        self.window_started = time.time()
        self._window_cpu = 0.0

    def _append(
        self,
        model: LoadedModel,
        images: np.ndarray,
        probabilities: np.ndarray,
        projected: np.ndarray,
    ) -> None:
        started = time.thread_time()
        if self.model is None or model.version != self.model.version:
            self._new_window(model)  # a new version: its own reference, its own windows
        assert self.window is not None  # _new_window(model) opened one
        self.window.append(probabilities, projected, image_statistics(images))
        self.metrics.monitor_images.labels(model.version).inc(len(images))
        self._window_cpu += time.thread_time() - started

    def _test_if_due(self) -> None:
        if self.window is None:
            return
        size = len(self.window)
        timed_out = time.time() - self.window_started >= self.settings.monitor_max_seconds
        if size >= self.settings.monitor_window or (timed_out and size >= MIN_WINDOW):
            self._test()
        elif timed_out:
            self.window_started = time.time()  # too few images: the next period decides

    def _test(self) -> None:
        model, window, tester = self.model, self.window, self._tester
        assert model is not None and window is not None and tester is not None  # a window is due
        result = tester.submit(test_arrays, _profile(model), window.arrays()).result()
        share = self.sampler.retune(
            result.pop("cpu_seconds") + self._window_cpu,
            len(window),
            self.settings.monitor_cpu_share,
        )
        version = model.version
        self.metrics.monitor_sample_share.labels(version).set(share)
        for name in TESTS:
            test = result["tests"][name]
            self.metrics.drift_detected.labels(version, name).set(int(test["drift"]))
            self.metrics.drift_p_value.labels(version, name).set(test["p_value"])
        self.metrics.drift_detected.labels(version, OVERALL).set(int(result["drift"]))
        self.metrics.drift_p_value.labels(version, OVERALL).set(
            min(result["tests"][name]["p_value"] for name in TESTS)
        )
        self.metrics.monitor_windows.labels(version).inc()
        self.windows_tested += 1
        self.last = {
            "model_version": version,
            "tested_at": time.time(),
            "window_size": len(window),
            "drift": result["drift"],
            "tests": result["tests"],
        }
        if result["drift"]:
            log.warning(
                "drift in a window of %d images for v%s: %s",
                len(window),
                version,
                ", ".join(n for n in TESTS if result["tests"][n]["drift"]),
            )
        self._record(version, window)
        self._new_window(model)

    def _record(self, version: str, window: Window) -> None:
        """Keep the window's summaries as .npz (the monitor step's recorded windows),
        the newest ``monitor_record_max`` only."""
        folder = self.settings.monitor_record_dir
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{RECORD_PREFIX}v{version}-{int(time.time() * 1000)}.npz"
        # allow_pickle: numpy's default, named so that the arrays' names are the only **keys
        np.savez_compressed(folder / name, allow_pickle=True, **window.arrays())
        for old in recorded_windows(folder)[: -self.settings.monitor_record_max]:
            old.unlink(missing_ok=True)

    def state(self, served: LoadedModel | None) -> dict:
        """What ``GET /monitoring`` answers."""
        last = self.last or {}
        return {
            "enabled": self.settings.monitor,
            "model_version": served.version if served else None,
            "reference_profile": bool(served is not None and served.profile is not None),
            "window_size": self.settings.monitor_window,
            "images_in_window": len(self.window) if self.window is not None else 0,
            "windows_tested": self.windows_tested,
            "sample_share": self.sampler.share,
            "last_window": last or None,
            "tests": last.get("tests", {}),
            "drift": bool(last.get("drift", False)),
        }


def joined_by_model(items: list[tuple]) -> list[tuple]:
    """Consecutive queued answers of one model version joined into one batch each."""
    groups: list[list[tuple]] = []
    for item in items:
        if groups and groups[-1][0][0] is item[0]:
            groups[-1].append(item)
        else:
            groups.append([item])
    return [
        (group[0][0], *(np.concatenate([item[i] for item in group]) for i in (1, 2, 3)))
        for group in groups
    ]


_BLAS_LIMIT: list = []  # the tester process' thread limit, kept alive


def lower_priority() -> None:
    """The tester process at the lowest CPU priority with one BLAS thread: under load it
    yields to the answers, and no idle BLAS thread spins on the answers' cores."""
    try:
        os.nice(MONITOR_NICENESS)
    except OSError as exc:  # not permitted: keep going
        log.info("the drift tester keeps its priority: %s", exc)
    try:
        from threadpoolctl import threadpool_limits  # scikit-learn's dependency
    except ImportError:
        log.info("threadpoolctl is missing: the drift tester keeps its BLAS threads")
        return
    _BLAS_LIMIT.append(threadpool_limits(limits=1))


def test_arrays(profile, arrays: dict[str, np.ndarray]) -> dict:
    """A window's test result as JSON-ready data, with the CPU seconds it took (run in the
    tester process)."""
    started = time.process_time()
    result = test_window(profile, Window(**arrays)).to_dict()
    return {**result, "cpu_seconds": time.process_time() - started}


vars(test_arrays)["__test__"] = False  # not a pytest test


def recorded_windows(folder: Path) -> list[Path]:
    """The recorded windows in ``folder``, oldest first."""
    return sorted(folder.glob(f"{RECORD_PREFIX}*.npz"), key=lambda p: p.stat().st_mtime)
