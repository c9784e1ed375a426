"""The ``monitor`` step: a folder or archive of images, or the windows a server recorded,
tested against a registered version's reference profile; ``drift.json`` and a
self-contained ``drift.html``. With ``retrain``: when drift is found or enough labelled
images have arrived since the last completed retraining (an export's record says how many
are new; every image of a folder made by hand counts), the pipeline runs again (``dvc
repro``, the labels as extra training data); once it has run to its end, the feedback store's
watermark moves past the labels it was given. Finding drift is not an error: the JSON says
``"drift": true|false``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from image_finetune.config import Params
from image_finetune.data.files import walk
from image_finetune.data.images import decode_image
from image_finetune.data.layouts import IMAGE_SUFFIXES
from image_finetune.engines import KERAS_ENGINE, Predictor, keras_predictor
from image_finetune.errors import IngestError, MissingInputError
from image_finetune.monitoring.drift import DriftResult, Window, test_window
from image_finetune.monitoring.feedback_store import mark_export_retrained
from image_finetune.monitoring.profile import ProfileError, ReferenceProfile
from image_finetune.monitoring.report import drift_html, sample_grid, test_figures
from image_finetune.monitoring.summaries import image_statistics, summarise_outputs
from image_finetune.registry.client import client_for
from image_finetune.registry.versions import (
    CHAMPION,
    download_reference_profile,
    version_at,
)
from image_finetune.serving.models import load_version
from image_finetune.steps.layout import DRIFT_HTML, DRIFT_JSON, read_export_record

log = logging.getLogger(__name__)

REPRO = ("dvc", "repro")
RECORDED_ARRAYS = ("probabilities", "projected", "image_stats")
MAX_RECORDED_BYTES = 512 * 1024 * 1024
MAX_LISTED_PROBLEMS = 100


@dataclass(frozen=True)
class MonitorSettings:
    """How the window is tested, and when the pipeline runs again."""

    version: str | None = None  # a version number; None: the version ``alias`` names
    alias: str = CHAMPION
    alpha: float = 0.05
    permutations: int = 500
    seed: int = 0
    max_images: int = 20_000
    labels: Path | None = None  # an image-folder tree of labelled feedback
    min_labels: int = 200  # new labels (since the last completed retraining) that retrain
    retrain: bool = False
    feedback_uri: str | None = None  # the store whose watermark a completed retrain moves


@dataclass
class Observed:
    """What the source gave: the window, its images (None: recorded summaries) and the
    files that could not be read (listed in the report, never silently dropped)."""

    window: Window
    images: np.ndarray | None = None
    problems: list[str] = field(default_factory=list)


def monitor(
    params: Params,
    source: Path,
    out: Path,
    root: Path,
    settings: MonitorSettings = MonitorSettings(),
) -> dict:
    """Test ``source`` against the reference of the registered version ``settings`` name;
    write ``drift.json`` and ``drift.html`` to ``out``; return the JSON's content."""
    source = Path(source)
    if not source.exists():
        raise MissingInputError(f"{source}: nothing to monitor there")
    client, name = client_for(params.registry), params.registry.model_name
    version = version_at(client, name, settings.version or f"@{settings.alias}")
    with tempfile.TemporaryDirectory(prefix="image-finetune-monitor-") as work:
        profile = _reference(client, name, str(version.version), Path(work))
        if is_recorded(source):
            observed = read_recorded(source, profile)
        else:
            observed = _summarise_images(
                client, params, version, source, profile, Path(work), settings.max_images
            )
    result = test_window(
        profile, observed.window, settings.alpha, settings.permutations, settings.seed
    )
    labelled, total = count_labelled(settings.labels) if settings.labels else (0, 0)
    report = {
        **result.to_dict(),
        "model_name": name,
        "model_version": str(version.version),
        "source": str(source),
        "unreadable": observed.problems[:MAX_LISTED_PROBLEMS],
        "labels": labelled,
        "labels_total": total,
        "min_labels": settings.min_labels,
        "retrain": _retrain_decision(result, labelled, settings),
    }
    write_report(out, report, result, profile, observed)
    if report["retrain"]["wanted"] and settings.retrain:
        report["retrain"].update(retrain(root, settings))
        (out / DRIFT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    log.info(
        "%s v%s on %s: %s", name, version.version, source, "DRIFT" if result.drift else "no drift"
    )
    return report


def _reference(client, name: str, version: str, work: Path) -> ReferenceProfile:
    folder = download_reference_profile(client, name, version, work / "profile")
    if folder is None:
        raise MissingInputError(
            f"{name} v{version} has no reference profile (registered before profiles "
            "existed): register a model trained by this pipeline, whose profile step makes one"
        )
    try:
        return ReferenceProfile.load(folder).with_version(version)
    except ProfileError as exc:
        raise MissingInputError(f"{name} v{version}: {exc}") from None


def is_recorded(source: Path) -> bool:
    """Recorded windows (an .npz: a zip file) rather than images, by content, not by name:
    a Kubeflow artifact's file has no suffix."""
    return source.is_file() and zipfile.is_zipfile(source)


def read_recorded(path: Path, profile: ReferenceProfile) -> Observed:
    """A window from a server's recorded summaries: an .npz of ``probabilities`` [N, C],
    ``projected`` [N, k] and ``image_stats`` [N, 4], no pickles, bounded in size."""
    if path.stat().st_size > MAX_RECORDED_BYTES:
        raise IngestError(
            f"{path}: {path.stat().st_size} bytes, more than recorded windows "
            f"may hold ({MAX_RECORDED_BYTES})"
        )
    try:
        with np.load(path, allow_pickle=False) as stored:
            missing = [k for k in RECORDED_ARRAYS if k not in stored.files]
            if missing:
                raise IngestError(
                    f"{path}: recorded windows lack {missing} "
                    f"(expected arrays {list(RECORDED_ARRAYS)})"
                )
            arrays = [np.asarray(stored[k], dtype=np.float32) for k in RECORDED_ARRAYS]
        window = Window(*arrays)
    except (ValueError, OSError, EOFError) as exc:
        raise IngestError(f"{path}: unreadable recorded windows ({exc})") from None
    if not all(np.isfinite(a).all() for a in arrays):
        raise IngestError(f"{path}: recorded windows hold NaN or infinite values")
    if window.probabilities.shape[1] != len(profile.class_names):
        raise IngestError(
            f"{path}: {window.probabilities.shape[1]} classes recorded, the "
            f"reference has {len(profile.class_names)}"
        )
    if window.projected.shape[1] != profile.dimensions:
        raise IngestError(
            f"{path}: embeddings projected to {window.projected.shape[1]} "
            f"dimensions, the reference to {profile.dimensions}"
        )
    return Observed(window)


def read_images(source: Path, size: int, how: str, limit: int) -> tuple[np.ndarray, list[str]]:
    """Every image under a folder or .tar(.gz) (up to ``limit``), fitted to ``size``, and
    the files that could not be read, each with why."""
    problems: list[str] = []
    images: list[np.ndarray] = []
    for entry in walk(source, problems):
        if entry.is_folder or entry.path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if len(images) >= limit:
            problems.append(f"{source}: more than {limit} images; the rest were not tested")
            break
        try:
            images.append(decode_image(entry.read(), str(entry.path), size, how))
        except ValueError as exc:
            problems.append(str(exc))
    if not images:
        raise IngestError(f"{source}: no readable images to monitor", problems)
    return np.stack(images), problems


def _summarise_images(
    client, params: Params, version, source: Path, profile: ReferenceProfile, work: Path, limit: int
) -> Observed:
    """The images' window, summarised as the reference was: on the profile's engine and
    precision (int8 summaries against an fp32 reference would be flagged as drift)."""
    loaded = load_version(params.registry, version, profile.engine, profile.precision)
    images, problems = read_images(source, loaded.input_size, loaded.image_fit, limit)
    predictor = (  # an engine's model is its Predictor; Keras's gets one
        keras_predictor(loaded.model)
        if loaded.engine == KERAS_ENGINE
        else cast(Predictor, loaded.model)
    )
    probabilities, embeddings = summarise_outputs(
        predictor.outputs, images, params.evaluate.batch_size
    )
    window = Window(probabilities, profile.project(embeddings), image_statistics(images))
    return Observed(window, images, problems)


def count_labelled(labels: Path) -> tuple[int, int]:
    """(new, all) labelled images in an image-folder tree: new since the last completed
    retraining where it is an export (its record says), else every image counts as new."""
    if not Path(labels).is_dir():
        raise MissingInputError(f"{labels}: no folder of labelled images there")
    total = sum(
        1
        for entry in walk(Path(labels), [])
        if not entry.is_folder and entry.path.suffix.lower() in IMAGE_SUFFIXES
    )
    record = read_export_record(Path(labels))
    return (min(record.new_images, total) if record is not None else total), total


def _retrain_decision(result: DriftResult, labelled: int, settings: MonitorSettings) -> dict:
    reasons = (["drift"] if result.drift else []) + (
        [f"{labelled} new labelled images (>= {settings.min_labels})"]
        if settings.labels and labelled >= settings.min_labels
        else []
    )
    return {"wanted": bool(reasons), "reasons": reasons, "ran": False}


def retrain_command(settings: MonitorSettings) -> list[str]:
    """``dvc repro``; with labels, as an experiment with the labelled folder added to
    ``data.extra_paths`` (DVC's way to run the pipeline with a changed parameter: the
    model it registers stays a challenger until a rollout or a person promotes it)."""
    if settings.labels is None:
        return list(REPRO)
    extra = json.dumps([str(Path(settings.labels).resolve())])
    return ["dvc", "exp", "run", "--set-param", f"++data.extra_paths={extra}"]  # add or set


def run_pipeline(root: Path, settings: MonitorSettings) -> dict:
    """Run the pipeline in ``root``; what ran and how it ended (its output streams through)."""
    command = retrain_command(settings)
    log.info("retraining: %s (in %s)", " ".join(command), root)
    try:  # this interpreter's DVC: the one installed beside the project, whatever PATH says
        code = subprocess.run([sys.executable, "-m", *command], cwd=root, check=False).returncode
    except OSError as exc:
        raise MissingInputError(
            f"could not run {command[0]} ({exc}): install DVC or run the pipeline yourself"
        ) from None
    return {"ran": True, "command": command, "exit_code": code}


def retrain(root: Path, settings: MonitorSettings) -> dict:
    """Run the pipeline; once it has run to its end with exported labels, move the feedback
    store's watermark past them (a failed run leaves them new: the next check counts them)."""
    outcome = run_pipeline(root, settings)
    record = (
        read_export_record(settings.labels)
        if outcome["exit_code"] == 0 and settings.labels is not None and settings.feedback_uri
        else None
    )
    if record is not None:
        outcome["watermark"] = mark_export_retrained(
            settings.feedback_uri, record, f"image-finetune monitor --retrain in {root}"
        )
    return outcome


def write_report(
    out: Path, report: dict, result: DriftResult, profile: ReferenceProfile, observed: Observed
) -> None:
    """``drift.json`` and ``drift.html`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / DRIFT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    facts = {
        "model": f"{report['model_name']} v{report['model_version']}",
        "source": report["source"],
        "unreadable files": len(report["unreadable"]),
        "labelled images": report["labels"],
        "retrain": ", ".join(report["retrain"]["reasons"]) or "not needed",
    }
    page = drift_html(
        result,
        test_figures(profile, observed.window),
        sample_grid(observed.images),
        "Drift report",
        facts,
    )
    (out / DRIFT_HTML).write_text(page)
