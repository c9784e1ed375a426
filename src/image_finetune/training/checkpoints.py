"""Checkpoints and resume: every epoch of an attempt is checkpointed (by the chief), and an
interrupted attempt resumes from its last readable checkpoint, its epoch log trimmed to
match."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import keras

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingPaths:
    """Where an attempt keeps its scratch: the feature cache of its backbone, resolution
    and data, and its own checkpoint folder and epoch log (kept outside the step's outputs
    so that a resumed run keeps its earlier epochs)."""

    features: Path
    checkpoints: Path

    @property
    def history(self) -> Path:
        """The epoch log beside the checkpoints."""
        return self.checkpoints.with_name(f"{self.checkpoints.name}.history.csv")


def checkpoint_callbacks(paths: TrainingPaths, resuming: bool, chief: bool) -> list:
    """The callbacks that log and checkpoint each epoch (the chief), or resume from the
    chief's checkpoint (the other workers)."""
    if chief:
        # The epoch's row is logged before its checkpoint: a kill in between re-runs the
        # epoch, and prepare_resume drops the row it would otherwise repeat.
        return [
            keras.callbacks.CSVLogger(str(paths.history), append=resuming),
            keras.callbacks.BackupAndRestore(str(paths.checkpoints), double_checkpoint=True),
        ]
    # saving takes every worker (its reads are collective): the others save aside
    return [
        RestoreOnly(str(paths.checkpoints), delete_checkpoint=False),
        keras.callbacks.BackupAndRestore(tempfile.mkdtemp(prefix="checkpoint-")),
    ]


class RestoreOnly(keras.callbacks.BackupAndRestore):
    """A worker's view of the chief's checkpoint: it resumes from it and never writes it."""

    def on_epoch_end(self, epoch, logs=None) -> None:
        """The chief alone saves."""

    def on_train_batch_end(self, batch, logs=None) -> None:
        """The chief alone saves."""


CHECKPOINT = ("latest.weights.h5", "training_metadata.json")
PREVIOUS = tuple(f"{name}.bkp" for name in CHECKPOINT)


def checkpoint_epoch(folder: Path, names: tuple[str, ...]) -> int | None:
    """The epochs a checkpoint pair has completed, or None where it is missing or corrupt."""
    import h5py

    weights, metadata = (folder / name for name in names)
    try:
        epoch = int(json.loads(metadata.read_text())["epoch"])
        with h5py.File(weights, "r") as handle:  # reads every tensor: truncation shows
            handle.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
        return epoch
    except (OSError, ValueError, KeyError, TypeError):
        return None


def prepare_resume(paths: TrainingPaths) -> int | None:
    """Make an interrupted attempt resumable; return the epoch it resumes at (None: fresh).

    A corrupt latest checkpoint gives way to the previous one; when neither loads, the
    folder is set aside with a warning and the attempt starts afresh. The epoch log keeps
    only the epochs the checkpoint holds."""
    folder = paths.checkpoints
    if not folder.exists():
        return None
    epoch = checkpoint_epoch(folder, CHECKPOINT)
    if epoch is None and (epoch := checkpoint_epoch(folder, PREVIOUS)) is not None:
        log.warning(
            "the latest checkpoint in %s is corrupt; resuming from the one before it (epoch %d)",
            folder,
            epoch,
        )
        for previous, latest in zip(PREVIOUS, CHECKPOINT, strict=True):
            shutil.copyfile(folder / previous, folder / latest)
    if epoch is None:
        aside = folder.with_name(f"{folder.name}.corrupt-{uuid.uuid4().hex[:8]}")
        folder.rename(aside)
        paths.history.unlink(missing_ok=True)
        log.warning(
            "no readable checkpoint in %s (set aside as %s): the attempt starts afresh",
            folder,
            aside,
        )
        return None
    _keep_epochs(paths.history, epoch)
    return epoch


def _keep_epochs(history: Path, epochs: int) -> None:
    if not history.exists():
        return
    lines = history.read_text().splitlines(keepends=True)
    kept = [
        line
        for line in lines[1:]
        if line.split(",", 1)[0].isdigit() and int(line.split(",", 1)[0]) < epochs
    ]
    history.write_text("".join(lines[:1] + kept))
