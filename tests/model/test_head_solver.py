"""The head rung solved by L-BFGS on cached features: the saved classifier carries the
solution (its own predictions give the logged validation accuracy), for many classes and for
two (scikit-learn's one-row binary case), and it does at least as well as Adam's 8 epochs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from image_finetune.config import Params
from image_finetune.data.canonical import load_split
from image_finetune.inference import load_classifier
from image_finetune.steps.train_rung import train_rung
from tests.support import ROOT, ingest_source, small_params


def head_params(folder: Path, weights: Path, solver: str) -> Params:
    return Params.model_validate(
        small_params(
            folder,
            weights,
            [
                {
                    "name": "head",
                    "epochs": 8,
                    "batch_size": 32,
                    "learning_rate": 0.003,
                    "head_solver": solver,
                }
            ],
            model={"image_size": 64},
            train={"cache_boundary": None},
        )
    )


def two_classes(small_folder: Path, out: Path) -> Path:
    for split in ("train", "test"):
        for name in ("automobile", "cat"):
            shutil.copytree(small_folder / split / name, out / split / name)
    return out


@pytest.mark.parametrize("classes", [10, 2])
def test_the_solved_head_is_the_saved_classifier(classes, small_folder, no_top_weights, tmp_path):
    folder = small_folder if classes == 10 else two_classes(small_folder, tmp_path / "two")
    params = head_params(folder, no_top_weights, "lbfgs")
    ingest_source(params.data, folder, tmp_path / "data")
    result = train_rung(params, 0, tmp_path / "data", tmp_path / "out", tmp_path / "cache", ROOT)
    assert result.mode == "head" and result.epochs_run == 1
    validation = load_split(tmp_path / "data", "validation")
    predicted = (
        load_classifier(Path(result.model_path))
        .predict(np.asarray(validation.images), verbose=0)
        .argmax(1)
    )
    accuracy = float((predicted == validation.labels).mean())
    # The same features, batched differently: at most one near-tie may fall the other way.
    assert accuracy == pytest.approx(result.best_val_accuracy, abs=1.01 / len(predicted))
    assert accuracy > 1.5 / classes  # well above chance
    if classes == 10:
        adam = train_rung(
            head_params(folder, no_top_weights, "adam"),
            0,
            tmp_path / "data",
            tmp_path / "adam",
            tmp_path / "cache",
            ROOT,
        )
        assert adam.epochs_run == 8
        assert result.best_val_accuracy >= adam.best_val_accuracy - 0.02
