"""The ``export-engine`` step: the selected classifier on the fast inference engine that
will serve (``engine.engine`` resolved). Its fp32 model (ONNX or OpenVINO IR) checked against
Keras on the whole test split, an int8 variant calibrated on a seeded sample of training
images and evaluated beside fp32 on the whole test split, and the accuracy rule applied
(engines.int8_verdict). The folder's engine.json says what serves: ``default_engine`` and
``serving_precision``; evaluate measures exactly that. The other engine is neither converted
nor checked here: ``bench/engines.py`` sets the engines side by side."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from image_finetune import engines
from image_finetune.config import Params
from image_finetune.data.canonical import load_split, read_manifest
from image_finetune.data.rows import take
from image_finetune.errors import EngineError
from image_finetune.inference import load_classifier, predict_batches
from image_finetune.stats import per_image_correct
from image_finetune.steps.layout import ENGINE_MANIFEST

log = logging.getLogger(__name__)


def export_engine(params: Params, data: Path, model: Path, out: Path) -> dict:
    """Write the engine folder ``out`` for the classifier in ``model``; its manifest out."""
    engine = engines.resolve_engine(params.engine.engine)
    classifier = load_classifier(model)
    test = load_split(data, "test")
    shutil.rmtree(out, ignore_errors=True)  # never a file of an earlier export left over
    out.mkdir(parents=True)
    manifest = {
        "default_engine": engine,
        "serving_precision": "fp32",
        "input_shape": [int(d) for d in classifier.input_shape[1:]],
        "class_names": read_manifest(data)["class_names"],
        "outputs": [engines.PROBABILITIES, engines.EMBEDDING],
        "files": {},
        "agreement": {},
        "int8": None,
    }
    if engine != engines.KERAS_ENGINE:
        fp32 = _convert_and_compare(
            classifier, out, engine, test.images, params.evaluate.batch_size, manifest["agreement"]
        )
        if params.engine.int8:
            labels = np.asarray(test.labels)
            manifest["int8"] = _int8(
                params,
                data,
                out,
                engine,
                test.images,
                per_image_correct(fp32, labels),
                labels,
            )
            if manifest["int8"]["servable"]:
                manifest["serving_precision"] = "int8"
    manifest["files"] = engines.file_hashes(out)
    (out / ENGINE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log.info(
        "engine %s, serving %s: %s",
        engine,
        manifest["serving_precision"],
        json.dumps({"agreement": manifest["agreement"], "int8": manifest["int8"]}),
    )
    return manifest


def _convert_and_compare(
    classifier, out: Path, engine: str, images, batch_size: int, agreement: dict
) -> np.ndarray:
    """``engine``'s fp32 model, checked against Keras on ``images``; its probabilities out.
    Beyond the tolerance the step fails."""
    engines.convert_keras(classifier, out, (engine,))
    reference = predict_batches(
        engines.keras_predictor(classifier), images, batch_size, "keras (reference)"
    )
    predictor = engines.open_predictor(out, engine, "fp32")
    probabilities = predict_batches(predictor, images, batch_size, f"{engine} fp32")
    agreement[engine] = engines.agreement(reference, probabilities)
    difference = agreement[engine]["max_abs_probability_difference"]
    if difference > engines.FP32_TOLERANCE:
        raise EngineError(
            f"{engine} fp32 gives probabilities up to {difference:.3g} away from Keras's "
            f"on the test split ({agreement[engine]['disagreements']} different classes; "
            f"tolerance {engines.FP32_TOLERANCE}): the conversion is wrong, not served"
        )
    return probabilities


def _int8(params: Params, data: Path, out: Path, engine: str, images, fp32_correct, labels) -> dict:
    """Quantize the serving engine's model on a seeded sample of training images, evaluate
    it on ``images`` and apply the rule."""
    train = load_split(data, "train").images
    count = min(params.engine.calibration_images, len(train))
    rows = np.sort(
        np.random.default_rng(params.train.seed).choice(len(train), count, replace=False)
    )
    engines.quantize_int8(out, engine, np.asarray(take(train, rows)))
    predictor = engines.open_predictor(out, engine, "int8")
    int8 = predict_batches(predictor, images, params.evaluate.batch_size, f"{engine} int8")
    verdict = engines.int8_verdict(
        fp32_correct,
        per_image_correct(int8, labels),
        params.engine.max_int8_loss_points,
        params.gate.significance,
    )
    return {"engine": engine, "calibration_images": count, **verdict}
