"""The fast engines on a small real classifier: the export-engine step converts and checks
the engine that serves alone, whose fp32 model gives Keras's answers within
engines.FP32_TOLERANCE (and so does the other engine's, converted here), int8 calibrated on
training images serves by the rule while int8 calibrated on black images is refused,
evaluate measures the engine and precision that serve, and registration carries the engine
folder to download_engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from image_finetune import engines
from image_finetune.config import EngineParams, EvaluateParams, RegistryParams
from image_finetune.data.canonical import load_split
from image_finetune.errors import MissingInputError
from image_finetune.inference import load_classifier, predict_batches
from image_finetune.monitoring.profile import ReferenceProfile
from image_finetune.monitoring.summaries import embedding_model
from image_finetune.stats import per_image_correct
from image_finetune.steps.evaluate import evaluate_classifier
from image_finetune.steps.export_engine import export_engine
from image_finetune.steps.profile import profile_classifier
from tests.support import ROOT, extract_subset, ingest_source

TEST_PER_CLASS = 100  # 1,000 test images: one image is 0.1 point, the rule allows 0.5


@pytest.fixture(scope="module")
def exported(small_model, cifar_tarball, tmp_path_factory) -> dict:
    """The session's small classifier through the export-engine step, on a dataset with the
    small model's training images and 1,000 real test images."""
    work = tmp_path_factory.mktemp("engines")
    folder = extract_subset(cifar_tarball, work / "images", {"train": 30, "test": TEST_PER_CLASS})
    params = small_model["params"].model_copy(
        update={
            "engine": EngineParams(calibration_images=200),
            "evaluate": EvaluateParams(
                flip_tta=False, bootstrap_samples=100, latency_runs=2, gallery_size=0
            ),
        }
    )
    ingest_source(params.data, folder, work / "data")
    manifest = export_engine(params, work / "data", small_model["model"], work / "engine")
    return {
        "params": params,
        "data": work / "data",
        "model": small_model["model"],
        "engine": work / "engine",
        "manifest": manifest,
        "work": work,
    }


def test_the_serving_engine_alone_is_converted_and_checked_against_keras(exported):
    manifest = exported["manifest"]
    serving = manifest["default_engine"]
    assert serving == engines.resolve_engine(exported["params"].engine.engine)
    assert list(manifest["agreement"]) == [serving]
    figures = manifest["agreement"][serving]
    assert figures["images"] == 10 * TEST_PER_CLASS and figures["disagreements"] == 0
    assert figures["max_abs_probability_difference"] <= engines.FP32_TOLERANCE
    # the other engine is bench/engines.py's business: nothing of it in the folder
    [other] = [e for e in engines.FAST_ENGINES if e != serving]
    for precision in engines.PRECISIONS:
        assert not engines.model_file(exported["engine"], other, precision).exists()
    with pytest.raises(MissingInputError, match=f"serves {serving}"):
        engines.open_predictor(exported["engine"], other)


def test_both_engines_named_outputs_match_keras_and_bad_shapes_are_refused(exported, tmp_path):
    images = np.asarray(load_split(exported["data"], "test").images[:64])
    classifier = load_classifier(exported["model"])
    probabilities, embedding = embedding_model(classifier).predict_on_batch(images)
    serving = exported["manifest"]["default_engine"]
    [other] = [e for e in engines.FAST_ENGINES if e != serving]
    engines.convert_keras(classifier, tmp_path, (other,))
    for engine, folder in ((serving, exported["engine"]), (other, tmp_path)):
        predictor = engines.open_predictor(folder, engine, threads=1)
        outputs = predictor.outputs(images)
        assert (predictor.input_shape, predictor.num_classes) == ((32, 32, 3), 10)
        np.testing.assert_allclose(
            outputs["probabilities"], probabilities, atol=engines.FP32_TOLERANCE
        )
        np.testing.assert_allclose(outputs["embedding"], embedding, rtol=1e-3, atol=1e-3)
        with pytest.raises(ValueError, match=r"shape \[N, 32, 32, 3\]"):
            predictor.predict_on_batch(images[:, :16])


def test_int8_calibrated_on_training_images_serves(exported):
    manifest = exported["manifest"]
    int8 = manifest["int8"]
    assert int8["engine"] == manifest["default_engine"] == engines.DEFAULT_ENGINE
    assert int8["calibration_images"] == 200 and int8["images"] == 10 * TEST_PER_CLASS
    assert int8["servable"], int8["reason"]
    assert int8["loss_points"] <= 0.5 and manifest["serving_precision"] == "int8"
    assert manifest["files"] == engines.file_hashes(exported["engine"])
    assert engines.model_file(exported["engine"], int8["engine"], "int8").exists()


def test_int8_calibrated_on_black_images_is_refused(exported, tmp_path):
    engine = engines.DEFAULT_ENGINE
    folder = shutil.copytree(exported["engine"], tmp_path / "engine")
    engines.quantize_int8(folder, engine, np.zeros((200, 32, 32, 3), np.uint8))
    test = load_split(exported["data"], "test")
    labels = np.asarray(test.labels)
    fp32 = predict_batches(engines.open_predictor(folder, engine, "fp32"), test.images, 256, "fp32")
    int8 = predict_batches(engines.open_predictor(folder, engine, "int8"), test.images, 256, "int8")
    verdict = engines.int8_verdict(
        per_image_correct(fp32, labels), per_image_correct(int8, labels), 0.5, 0.05
    )
    assert not verdict["servable"] and verdict["loss_points"] > 0.5, verdict
    assert "loses" in verdict["reason"]
    # wrecked, not unlucky: the int8 model answers one class whatever the image
    assert len(np.unique(int8.argmax(axis=1))) == 1 < len(np.unique(fp32.argmax(axis=1)))


def test_evaluate_measures_the_engine_and_precision_that_serve(exported, tmp_path):
    manifest = exported["manifest"]
    metrics = evaluate_classifier(
        exported["params"],
        exported["data"],
        exported["model"],
        tmp_path / "evaluation",
        "test",
        engine=exported["engine"],
    )
    assert (metrics["engine"], metrics["precision"]) == (
        manifest["default_engine"],
        manifest["serving_precision"],
    )
    assert metrics["accuracy"] == pytest.approx(manifest["int8"]["accuracy"])
    keras = evaluate_classifier(
        exported["params"], exported["data"], exported["model"], tmp_path / "keras", "test"
    )
    assert (keras["engine"], keras["precision"]) == ("tensorflow", "fp32")
    assert keras["accuracy"] == pytest.approx(manifest["int8"]["fp32_accuracy"])


def test_a_stem_like_model_compiles_to_the_engine_with_one_output(small_model, tmp_path):
    import keras

    from image_finetune.training.model import classifier_parts

    backbone = classifier_parts(load_classifier(small_model["model"])).backbone
    stem = keras.Model(backbone.inputs, backbone.get_layer("block_2_add").output)
    images = np.random.default_rng(0).uniform(-1, 1, (8, *stem.input_shape[1:])).astype(np.float32)
    expected = np.asarray(stem.predict_on_batch(images))
    for engine in engines.FAST_ENGINES:
        predictor = engines.compile_keras(stem, engine, tmp_path / engine)
        assert list(predictor.outputs(images)) == [engines.OUTPUT]
        np.testing.assert_allclose(predictor.predict_on_batch(images), expected, atol=1e-4)
    assert engines.compile_keras(stem, "tensorflow", tmp_path).engine == "tensorflow"


def test_registration_carries_the_engine_folder(exported, tmp_path):
    from image_finetune.registry.client import client_for
    from image_finetune.registry.versions import download_engine
    from image_finetune.steps.final_gate import final_gate
    from image_finetune.steps.register import register_classifier

    registry = RegistryParams(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", model_name="engined")
    params = exported["params"].model_copy(update={"registry": registry})
    evaluation = tmp_path / "evaluation"
    evaluate_classifier(
        params, exported["data"], exported["model"], evaluation, "test", engine=exported["engine"]
    )
    final_gate(params, evaluation, tmp_path / "gate.json")
    outcomes = {
        engine: register_classifier(
            params,
            exported["data"],
            evaluation,
            tmp_path / "gate.json",
            tmp_path / "out.json",
            ROOT,
            model=exported["model"],
            engine=engine,
            pipeline_run_id=str(engine),
        )
        for engine in (exported["engine"], None)
    }
    outcome = outcomes[exported["engine"]]
    client = client_for(registry)
    version = client.get_model_version("engined", outcome["version"])
    manifest = exported["manifest"]
    assert version.tags["engine"] == manifest["default_engine"]
    assert version.tags["engine_precision"] == manifest["serving_precision"]
    assert float(version.tags["int8_loss_points"]) == manifest["int8"]["loss_points"]
    folder = download_engine(client, "engined", outcome["version"], tmp_path / "download")
    assert engines.file_hashes(folder) == manifest["files"]
    predictor = engines.open_predictor(
        Path(folder), manifest["default_engine"], manifest["serving_precision"]
    )
    assert predictor.precision == manifest["serving_precision"]
    # a version registered before engines existed: none, so it is served on Keras
    assert download_engine(client, "engined", outcomes[None]["version"], tmp_path / "x") is None
    # the registered Keras file is the evaluated one, byte for byte (copied, not re-saved)
    import mlflow

    from image_finetune.registry.client import mlflow_store

    with mlflow_store(registry.tracking_uri):
        logged = Path(
            mlflow.artifacts.download_artifacts(
                f"models:/engined/{outcome['version']}", dst_path=str(tmp_path / "logged")
            )
        )
    [keras_file] = logged.rglob("model.keras")
    assert keras_file.read_bytes() == Path(exported["model"]).read_bytes()


def test_the_reference_profile_is_summarised_on_the_engine_that_serves(exported, tmp_path):
    """The server summarises its traffic on the engine and precision it serves; the profile
    it is compared with is summarised there too (int8 moves the embedding by ~20% RMS, which
    the drift tests would flag on clean traffic against a Keras fp32 reference)."""
    manifest, params = exported["manifest"], exported["params"]
    profile = profile_classifier(
        params, exported["data"], exported["model"], tmp_path / "served", exported["engine"]
    )
    served_on = (manifest["default_engine"], manifest["serving_precision"])
    assert (profile.engine, profile.precision) == served_on
    assert ReferenceProfile.load(tmp_path / "served").precision == manifest["serving_precision"]
    served = engines.open_predictor(exported["engine"], *served_on)
    validation = load_split(exported["data"], "validation").images
    expected = predict_batches(served, validation, params.evaluate.batch_size, "served")
    np.testing.assert_allclose(profile.probabilities, expected, atol=1e-6)
    keras = profile_classifier(params, exported["data"], exported["model"], tmp_path / "keras")
    assert (keras.engine, keras.precision) == ("tensorflow", "fp32")
