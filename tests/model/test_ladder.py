"""The retrain loop itself (the ``train`` stage of ``dvc repro``) on real images and weights,
with cheap rungs: it stops at the first rung that passes, goes through fail-fail-pass, and
warm-starts every attempt from the one before."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from image_finetune.config import Params
from image_finetune.data.canonical import load_split
from image_finetune.errors import GateFailedError
from image_finetune.inference import load_classifier, predict_proba
from image_finetune.steps.climb_ladder import climb_ladder
from image_finetune.steps.layout import MODEL_FILE
from tests.support import ROOT, ingest_source, small_params, validate_with

HOPELESS = {"epochs": 1, "batch_size": 64, "learning_rate": 1e-7}
LEARNS = {"epochs": 6, "batch_size": 32, "learning_rate": 0.003}


def ladder_params(folder: Path, weights: Path, rungs: list[dict]) -> Params:
    return Params.model_validate(
        small_params(
            folder,
            weights,
            rungs,
            model={"image_size": 64},
            train={"cache_boundary": None},
            evaluate={
                "flip_tta": False,
                "bootstrap_samples": 100,
                "latency_runs": 1,
                "gallery_size": 0,
            },
            # Chance is 0.1; a head that learns for 6 epochs reaches about 0.4 here.
            gate={
                "min_accuracy": 0.25,
                "min_macro_f1": 0.0,
                "min_class_recall": 0.0,
                "max_latency_p95_ms": 100000,
            },
        )
    )


@pytest.fixture(scope="module")
def validated(small_folder, tmp_path_factory) -> tuple[Path, Path]:
    """The small real dataset, ingested and validated by the real steps."""
    work = tmp_path_factory.mktemp("ladder-data")
    params = ladder_params(small_folder, Path("unused"), [{"name": "x", **HOPELESS}])
    ingest_source(params.data, small_folder, work / "data")
    validate_with(work / "data", params.validate_, work / "checks")
    return work / "data", work / "checks" / "result.json"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One feature cache: every rung here sees images through the same frozen stem."""
    return tmp_path_factory.mktemp("ladder-cache")


def climb(params: Params, validated, out: Path, cache: Path) -> dict:
    data, validation = validated
    climb_ladder(params, data, validation, out, cache, ROOT)
    return json.loads((out / "summary.json").read_text())


def test_fail_fail_pass_stops_at_the_first_pass_and_chains_warm_starts(
    small_folder, no_top_weights, validated, cache, tmp_path, caplog
):
    rungs = [
        {"name": "hopeless-1", **HOPELESS},
        {"name": "hopeless-2", **HOPELESS},
        {"name": "learns", **LEARNS},
        {"name": "never-tried", **LEARNS},
    ]
    caplog.set_level(logging.INFO, logger="image_finetune")
    summary = climb(
        ladder_params(small_folder, no_top_weights, rungs), validated, tmp_path / "models", cache
    )
    assert [(a["index"], a["passed"]) for a in summary["attempts"]] == [
        (0, False),
        (1, False),
        (2, True),
    ]
    assert summary["selected"] == 2 and summary["rungs"] == 4
    assert not (tmp_path / "models" / "attempt_3").exists()  # the loop stopped at the pass
    warm_starts = [r.getMessage() for r in caplog.records if "warm start" in r.getMessage()]
    assert warm_starts == [
        f"warm start from {tmp_path}/models/attempt_{k}/{MODEL_FILE}" for k in (0, 1)
    ]
    selected = load_classifier(tmp_path / "models" / "selected" / MODEL_FILE).get_weights()
    winner = load_classifier(tmp_path / "models" / "attempt_2" / MODEL_FILE).get_weights()
    assert all((a == b).all() for a, b in zip(selected, winner, strict=True))
    history = (tmp_path / "models" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 1 + 1 + LEARNS["epochs"]  # header, then every attempt's epochs


def test_a_ladder_whose_rungs_all_fail_fails_with_every_attempts_reasons(
    small_folder, no_top_weights, validated, cache, tmp_path
):
    rungs = [{"name": "hopeless-1", **HOPELESS}, {"name": "hopeless-2", **HOPELESS}]
    params = ladder_params(small_folder, no_top_weights, rungs)
    with pytest.raises(
        GateFailedError,
        match=r"(?s)attempt 0 \(hopeless-1\): FAIL accuracy"
        r".*attempt 1 \(hopeless-2\): FAIL accuracy",
    ):
        climb(params, validated, tmp_path / "models", cache)
    summary = json.loads((tmp_path / "models" / "summary.json").read_text())
    assert summary["selected"] is None and len(summary["attempts"]) == 2
    assert not (tmp_path / "models" / "selected").exists()


def test_an_attempt_is_evaluated_on_the_cached_features_it_validated_on(
    small_folder, no_top_weights, validated, cache, tmp_path
):
    """The attempt's validation scores come from the cached features (the frozen part is not
    run again) and equal what its saved model gives on the images, flip TTA included."""
    params = ladder_params(small_folder, no_top_weights, [{"name": "learns", **LEARNS}])
    params = params.model_copy(
        update={"evaluate": params.evaluate.model_copy(update={"flip_tta": True})}
    )
    climb(params, validated, tmp_path / "models", cache)
    evaluation = tmp_path / "models" / "attempt_0" / "evaluation"
    details = json.loads((evaluation / "details.json").read_text())
    assert details["scored_on"] == "cached features (frozen part on tensorflow fp32)"
    recorded = np.load(evaluation / "predictions.npz")["probabilities"]
    model = load_classifier(tmp_path / "models" / "attempt_0" / MODEL_FILE)
    images = load_split(validated[0], "validation").images
    direct = predict_proba(model, images, 64, flip_tta=True)
    assert np.abs(recorded - direct).max() < 1e-5
