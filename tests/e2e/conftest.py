"""Fixtures of the serving tests: one model trained on real CIFAR-10 images and registered as
champion, and one server process over it, both shared by every serving test module."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from image_finetune.config import load_params
from image_finetune.steps.evaluate import evaluate_classifier
from image_finetune.steps.final_gate import final_gate
from image_finetune.steps.train_rung import train_rung
from tests.e2e.serving_support import (
    MAX_BODY_BYTES,
    MAX_IMAGE_BYTES,
    MAX_IMAGES,
    MAX_PIXELS,
    register,
    serve,
)
from tests.support import ROOT, extract_subset, ingest_source


@pytest.fixture(scope="session")
def champion(cifar_tarball, no_top_weights, tmp_path_factory):
    """A model trained on real images, evaluated offline on 200 test images, champion v1."""
    work = tmp_path_factory.mktemp("serving")
    folder = extract_subset(cifar_tarball, work / "images", {"train": 30, "test": 20})
    params_file = work / "params.yaml"
    params_file.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "path": str(folder),
                    "validation_fraction": 0.2,
                    "min_validation_per_class": 1,
                },
                "model": {"weights": str(no_top_weights), "image_size": 64},
                "train": {
                    "ladder": [
                        {"name": "head", "epochs": 8, "batch_size": 32, "learning_rate": 0.003}
                    ]
                },
                "evaluate": {
                    "flip_tta": False,
                    "bootstrap_samples": 200,
                    "latency_runs": 3,
                    "gallery_size": 6,
                },
                "gate": {
                    "min_accuracy": 0.0,
                    "min_macro_f1": 0.0,
                    "min_class_recall": 0.0,
                    "max_latency_p95_ms": 10000,
                },
                "registry": {
                    "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
                    "model_name": "served",
                },
            }
        )
    )
    params = load_params(params_file, use_env=False)
    data = work / "data"
    ingest_source(params.data, folder, data)
    model_path = Path(
        train_rung(params, 0, data, work / "attempt", work / "cache", ROOT).model_path
    )
    evaluation = work / "evaluation"
    metrics = evaluate_classifier(params, data, model_path, evaluation, "test", "offline")
    decision = work / "gate.json"
    final_gate(params, evaluation, decision)
    outcome = register(params, data, evaluation, decision, model_path, "serving-1")
    assert outcome["promoted"] and outcome["version"] == "1"
    return {
        "params": params,
        "params_file": params_file,
        "folder": folder,
        "data": data,
        "model_path": model_path,
        "evaluation": evaluation,
        "decision": decision,
        "offline_accuracy": metrics["accuracy"],
        "work": work,
    }


@pytest.fixture(scope="session")
def server(champion, tmp_path_factory):
    """The champion served by a real process, configured by environment variables only and
    started from an empty working directory (no params.yaml)."""
    registry = champion["params"].registry
    env = {
        "MLFLOW_TRACKING_URI": registry.tracking_uri,
        "IMAGE_FINETUNE_MODEL_NAME": registry.model_name,
        "IMAGE_FINETUNE_POLL_SECONDS": "1",
        "IMAGE_FINETUNE_MAX_IMAGES": str(MAX_IMAGES),
        "IMAGE_FINETUNE_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
        "IMAGE_FINETUNE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "IMAGE_FINETUNE_MAX_PIXELS": str(MAX_PIXELS),
    }
    running = serve(env, [], tmp_path_factory.mktemp("empty-workdir"))
    yield running
    running.stop()
