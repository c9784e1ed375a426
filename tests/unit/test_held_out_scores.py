"""An attempt's recorded validation scores are read only for the model file and the labels
they were computed for; anything else makes the evaluation run the model."""

from __future__ import annotations

import numpy as np
import pytest

from image_finetune.steps.layout import (
    HELD_OUT_SCORES,
    read_held_out_scores,
    write_held_out_scores,
)

LABELS = np.array([0, 1, 2, 1])


@pytest.fixture
def recorded(tmp_path):
    """A model file with scores beside it: (model, probabilities, mirrored)."""
    model = tmp_path / "model.keras"
    model.write_bytes(b"the weights")
    rng = np.random.default_rng(0)
    probabilities, mirrored = rng.dirichlet(np.ones(3), 4), rng.dirichlet(np.ones(3), 4)
    write_held_out_scores(model, LABELS, probabilities, mirrored, "cached features (test)")
    return model, probabilities.astype(np.float32), mirrored.astype(np.float32)


def test_scores_are_read_back_plain_or_averaged_with_the_mirrored_copies(recorded):
    model, probabilities, mirrored = recorded
    plain, source = read_held_out_scores(model, LABELS, flip_tta=False)
    assert np.array_equal(plain, probabilities) and source == "cached features (test)"
    averaged, _ = read_held_out_scores(model, LABELS, flip_tta=True)
    assert np.allclose(averaged, (probabilities + mirrored) / 2)


def test_scores_of_another_model_file_are_not_read(recorded):
    model, _, _ = recorded
    model.write_bytes(b"retrained weights")
    assert read_held_out_scores(model, LABELS, flip_tta=False) is None


def test_scores_of_other_labels_are_not_read(recorded):
    model, _, _ = recorded
    assert read_held_out_scores(model, LABELS[::-1], flip_tta=False) is None
    assert read_held_out_scores(model, LABELS[:3], flip_tta=False) is None


@pytest.mark.parametrize("damage", [b"", b"not an npz", b"PK\x03\x04 truncated"])
def test_missing_or_damaged_scores_are_not_read(recorded, damage):
    model, _, _ = recorded
    (model.parent / HELD_OUT_SCORES).write_bytes(damage)
    assert read_held_out_scores(model, LABELS, flip_tta=False) is None
    (model.parent / HELD_OUT_SCORES).unlink()
    assert read_held_out_scores(model, LABELS, flip_tta=False) is None
