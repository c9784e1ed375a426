"""The training step is backend-neutral: the same ladder trains under JAX and PyTorch."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from image_finetune.config import Params
from tests.support import ingest_source, missing_part, small_params, validate_with


def backend_params(folder: Path, weights: Path) -> dict:
    return small_params(
        folder,
        weights,
        [
            {"name": "head", "epochs": 8, "batch_size": 32, "learning_rate": 0.003},
            {
                "name": "top",
                "unfreeze_from": "block_13_expand",
                "epochs": 1,
                "batch_size": 64,
                "learning_rate": 0.0001,
            },
        ],
        model={"image_size": 64},
        train={"cache_boundary": "block_12_add"},
        evaluate={
            "flip_tta": False,
            "bootstrap_samples": 100,
            "latency_runs": 2,
            "gallery_size": 0,
        },
        gate={
            "min_accuracy": 0.99,
            "min_macro_f1": 0.0,
            "min_class_recall": 0.0,
            "max_latency_p95_ms": 100000,
        },
    )


@pytest.fixture(scope="module")
def validated(small_folder, no_top_weights, tmp_path_factory) -> Path:
    """Ingested and validated once (the data steps do not depend on the Keras backend)."""
    work = tmp_path_factory.mktemp("backends")
    params = Params.model_validate(backend_params(small_folder, no_top_weights))
    ingest_source(params.data, small_folder, work / "data")
    assert validate_with(work / "data", params.validate_, work / "checks").success
    return work


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_training_step_runs_on_another_keras_backend(
    backend, small_folder, no_top_weights, validated, tmp_path
):
    if importlib.util.find_spec(backend) is None:
        missing_part(f"{backend} is not installed (infra/setup.sh installs it where it can)")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(backend_params(small_folder, no_top_weights)))
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cli = [sys.executable, "-m", "image_finetune.cli"]
    result = subprocess.run(
        [
            *cli,
            "train",
            "-p",
            str(params),
            "--data",
            str(validated / "data"),
            "--validation",
            str(validated / "checks" / "result.json"),
            "--out",
            "models",
            "--cache",
            "cache",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    # The gate is set out of reach: both rungs must train, be evaluated and be judged.
    assert result.returncode == 6, result.stderr[-2000:]
    for index, mode in ((0, "head"), (1, "tail")):
        attempt = json.loads((tmp_path / "models" / f"attempt_{index}" / "result.json").read_text())
        assert attempt["backend"] == backend and attempt["mode"] == mode
        # Chance is 0.1; the TensorFlow backend reaches about 0.4 here.
        assert attempt["best_val_accuracy"] > 0.25, f"{backend} rung {index} did not learn"
        decision = json.loads(
            (tmp_path / "models" / f"attempt_{index}" / "decision.json").read_text()
        )
        assert decision["passed"] is False
