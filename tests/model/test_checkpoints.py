"""Resuming after any kill: a corrupt latest checkpoint gives way to the previous one, and
when neither loads the attempt starts afresh instead of failing forever."""

import json
from pathlib import Path

import h5py
import numpy as np

from image_finetune.training.checkpoints import TrainingPaths, prepare_resume


def write_pair(folder: Path, epoch: int, suffix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"latest.weights.h5{suffix}", "w") as handle:
        handle["layer/kernel"] = np.full((64, 64), epoch, dtype="float32")
    (folder / f"training_metadata.json{suffix}").write_text(json.dumps({"epoch": epoch}))


def paths(tmp_path: Path) -> TrainingPaths:
    training = TrainingPaths(
        features=tmp_path / "features", checkpoints=tmp_path / "checkpoints" / "attempt"
    )
    training.history.parent.mkdir(parents=True, exist_ok=True)
    training.history.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n")
    return training


def test_a_sound_checkpoint_resumes_and_the_log_keeps_only_its_epochs(tmp_path):
    training = paths(tmp_path)
    write_pair(training.checkpoints, 2)
    assert prepare_resume(training) == 2
    assert training.history.read_text() == "epoch,loss\n0,1.0\n1,0.9\n"


def test_a_truncated_latest_checkpoint_gives_way_to_the_previous_one(tmp_path, caplog):
    training = paths(tmp_path)
    write_pair(training.checkpoints, 1, ".bkp")
    write_pair(training.checkpoints, 2)
    weights = training.checkpoints / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert prepare_resume(training) == 1
    assert "is corrupt; resuming from the one before it" in caplog.text
    with h5py.File(weights) as handle:
        assert handle["layer/kernel"][0, 0] == 1
    assert training.history.read_text() == "epoch,loss\n0,1.0\n"


def test_garbage_metadata_counts_as_corrupt(tmp_path):
    training = paths(tmp_path)
    write_pair(training.checkpoints, 1, ".bkp")
    write_pair(training.checkpoints, 2)
    (training.checkpoints / "training_metadata.json").write_text('{"epo')
    assert prepare_resume(training) == 1


def test_with_no_readable_checkpoint_the_attempt_starts_afresh(tmp_path, caplog):
    training = paths(tmp_path)
    write_pair(training.checkpoints, 2)
    (training.checkpoints / "latest.weights.h5").write_bytes(b"not hdf5")
    assert prepare_resume(training) is None
    assert not training.checkpoints.exists() and not training.history.exists()
    [aside] = training.checkpoints.parent.glob("attempt.corrupt-*")
    assert (aside / "training_metadata.json").exists()  # kept for a post-mortem
    assert "the attempt starts afresh" in caplog.text


def test_no_checkpoint_is_a_fresh_start(tmp_path):
    assert prepare_resume(paths(tmp_path)) is None
