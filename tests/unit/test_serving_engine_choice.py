"""Choosing what serves a version: the engine setting, the precision a version's engine
manifest allows, the projection the drift monitor applies to an engine's embedding, and the
OIP model metadata naming the engine."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from image_finetune.monitoring.profile import fit_projection
from image_finetune.serving import oip
from image_finetune.serving.models import PrecisionError, project_without_blas, served_precision
from image_finetune.serving.settings import ServeSettings

SERVABLE = {"serving_precision": "int8", "int8": {"servable": True, "reason": "ok"}}
REFUSED = {
    "serving_precision": "fp32",
    "int8": {"servable": False, "reason": "lost 1.20 points (at most 0.5)"},
}


def test_auto_serves_at_the_precision_the_manifest_names():
    assert served_precision(SERVABLE, "auto", "3") == "int8"
    assert served_precision(REFUSED, "auto", "3") == "fp32"
    assert served_precision({}, "auto", "3") == "fp32"  # a manifest without int8


def test_fp32_is_always_servable_and_int8_only_where_the_rule_passed_it():
    assert served_precision(SERVABLE, "fp32", "3") == "fp32"
    assert served_precision(SERVABLE, "int8", "3") == "int8"
    with pytest.raises(PrecisionError, match=r"v3 has no servable int8 .*lost 1\.20 points"):
        served_precision(REFUSED, "int8", "3")
    with pytest.raises(PrecisionError, match="none was made"):
        served_precision({"serving_precision": "fp32"}, "int8", "3")


@pytest.mark.parametrize(
    "setting", [{"engine": "tpu"}, {"engine": "ONNX"}, {"precision": "int4"}, {"precision": ""}]
)
def test_unknown_engines_and_precisions_are_refused_with_the_choices(setting):
    with pytest.raises(ValidationError, match="tensorflow, onnxruntime, openvino|auto"):
        ServeSettings(**setting)


def test_every_engine_and_precision_is_accepted():
    for engine in ("auto", "tensorflow", "onnxruntime", "openvino"):
        for precision in ("auto", "fp32", "int8"):
            settings = ServeSettings(engine=engine, precision=precision)
            assert (settings.engine, settings.precision) == (engine, precision)


def test_the_engine_projection_is_the_profiles():
    rng = np.random.default_rng(0)
    training = rng.normal(size=(200, 64)).astype(np.float32)
    mean, components = fit_projection(training, 8)
    batch = rng.normal(size=(32, 64)).astype(np.float32)
    projected = project_without_blas(batch, mean, components)
    assert projected.dtype == np.float32 and projected.shape == (32, 8)
    np.testing.assert_allclose(projected, (batch - mean) @ components.T, atol=1e-5)


@pytest.mark.parametrize(
    "engine,platform",
    [("openvino", "openvino"), ("onnxruntime", "onnxruntime_onnx"), ("tensorflow", "keras")],
)
def test_oip_model_metadata_names_the_engine_and_precision(engine, platform):
    metadata = oip.model_metadata("m", "4", 32, 10, engine, "int8").model_dump()
    assert metadata["platform"] == platform
    assert metadata["parameters"] == {"engine": engine, "precision": "int8"}
    assert metadata["inputs"][0]["shape"] == [-1, 32, 32, 3]
