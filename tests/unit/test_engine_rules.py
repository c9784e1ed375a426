"""The engine choice and the accuracy rules as pure functions: which engine runs, when an int8
variant may serve (at most max_int8_loss_points lost AND McNemar not significant), how an
engine's agreement with Keras is counted, and the engine params' validation."""

import json

import numpy as np
import pytest

from image_finetune import engines
from image_finetune.config import parse_params
from image_finetune.errors import ConfigError, MissingInputError
from image_finetune.steps.layout import ENGINE_MANIFEST


def correctness(both: int, fp32_only: int, int8_only: int, neither: int):
    """Paired per-image correctness with the given counts of each outcome."""
    fp32 = [True] * both + [True] * fp32_only + [False] * int8_only + [False] * neither
    int8 = [True] * both + [False] * fp32_only + [True] * int8_only + [False] * neither
    return np.array(fp32), np.array(int8)


def test_int8_that_loses_little_and_not_significantly_serves():
    fp32, int8 = correctness(8700, 30, 25, 1245)  # 5 images net of 10,000: 0.05 points
    verdict = engines.int8_verdict(fp32, int8, 0.5, 0.05)
    assert verdict["servable"] and verdict["loss_points"] == pytest.approx(0.05)
    assert verdict["accuracy"] == pytest.approx(0.8725)
    assert verdict["fp32_accuracy"] == pytest.approx(0.873)
    assert verdict["mcnemar_p_value"] > 0.05 and verdict["images"] == 10_000


def test_int8_that_loses_too_many_points_is_refused():
    fp32, int8 = correctness(8000, 700, 0, 1300)  # 7 points
    verdict = engines.int8_verdict(fp32, int8, 0.5, 0.05)
    assert not verdict["servable"] and verdict["loss_points"] == pytest.approx(7.0)
    assert "loses 7.00 accuracy points" in verdict["reason"]


def test_int8_within_the_points_but_significantly_worse_is_refused():
    # 45 images lost, none won: 0.45 points (within 0.5) but p = 0.5**45
    fp32, int8 = correctness(8700, 45, 0, 1255)
    verdict = engines.int8_verdict(fp32, int8, 0.5, 0.05)
    assert verdict["loss_points"] == pytest.approx(0.45)
    assert not verdict["servable"] and "significantly worse" in verdict["reason"]
    assert verdict["mcnemar_p_value"] == pytest.approx(0.5**45)


def test_exactly_the_allowed_loss_serves_and_a_hair_more_does_not():
    exactly = correctness(8000, 150, 100, 1750)  # 50 images of 10,000: 0.5 points
    assert engines.int8_verdict(*exactly, 0.5, 1e-9)["servable"]
    more = correctness(8000, 151, 100, 1749)
    assert not engines.int8_verdict(*more, 0.5, 1e-9)["servable"]


def test_int8_that_is_better_serves():
    fp32, int8 = correctness(8000, 10, 40, 1950)
    verdict = engines.int8_verdict(fp32, int8, 0.5, 0.05)
    assert verdict["servable"] and verdict["loss_points"] < 0


def test_the_rule_needs_the_same_images():
    with pytest.raises(ValueError, match="same images"):
        engines.int8_verdict(np.ones(10, bool), np.ones(9, bool), 0.5, 0.05)
    with pytest.raises(ValueError, match="at least one image"):
        engines.int8_verdict(np.ones(0, bool), np.ones(0, bool), 0.5, 0.05)


def test_agreement_counts_other_classes_and_the_largest_difference():
    reference = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]], np.float32)
    other = np.array([[0.9, 0.1], [0.6, 0.4], [0.25, 0.75]], np.float32)
    found = engines.agreement(reference, other)
    assert found == {
        "images": 3,
        "disagreements": 1,
        "max_abs_probability_difference": pytest.approx(0.2),
    }
    with pytest.raises(ValueError, match="same images"):
        engines.agreement(reference, other[:2])


def test_an_engine_is_requested_then_taken_from_the_environment_then_auto(monkeypatch):
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    assert engines.resolve_engine("onnxruntime") == "onnxruntime"
    assert engines.resolve_engine(None) == engines.DEFAULT_ENGINE  # installed here
    monkeypatch.setenv(engines.ENGINE_ENV, "TensorFlow")
    assert engines.resolve_engine() == "tensorflow"
    assert engines.resolve_engine("openvino") == "openvino"


def test_auto_falls_back_to_the_other_fast_engine_then_tensorflow(monkeypatch):
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    other = next(e for e in engines.FAST_ENGINES if e != engines.DEFAULT_ENGINE)
    monkeypatch.setattr(engines, "engine_available", lambda engine: engine == other)
    assert engines.resolve_engine("auto") == other
    monkeypatch.setattr(engines, "engine_available", lambda engine: False)
    assert engines.resolve_engine("auto") == "tensorflow"


@pytest.mark.parametrize("name", ["tensorrt", "", "onnx runtime", "../openvino"])
def test_an_unknown_engine_is_a_config_error_listing_the_choices(name, monkeypatch):
    monkeypatch.setenv(engines.ENGINE_ENV, name or "  ")
    with pytest.raises(ConfigError, match="auto, tensorflow, onnxruntime, openvino") as error:
        engines.resolve_engine()
    assert error.value.exit_code == 2


def test_precisions_and_model_files_are_checked(tmp_path):
    assert engines.model_file(tmp_path, "openvino", "int8") == (
        tmp_path / "openvino" / "model.int8.xml"
    )
    assert engines.model_files(tmp_path, "openvino") == [
        tmp_path / "openvino" / "model.xml",
        tmp_path / "openvino" / "model.bin",
    ]
    with pytest.raises(ConfigError, match="fp32, int8"):
        engines.model_file(tmp_path, "onnxruntime", "fp16")
    with pytest.raises(ConfigError, match="no file in an engine folder"):
        engines.model_file(tmp_path, "tensorflow")
    with pytest.raises(MissingInputError, match="no int8 onnxruntime model"):
        engines.open_predictor(tmp_path, "onnxruntime", "int8")


def test_the_manifest_is_read_with_clear_errors(tmp_path):
    with pytest.raises(MissingInputError, match="not an engine folder"):
        engines.read_manifest(tmp_path)
    (tmp_path / ENGINE_MANIFEST).write_bytes(b"\xff{not json")
    with pytest.raises(MissingInputError, match="unreadable engine manifest"):
        engines.read_manifest(tmp_path)
    (tmp_path / ENGINE_MANIFEST).write_text(json.dumps({"default_engine": "openvino"}))
    (tmp_path / "openvino").mkdir()
    (tmp_path / "openvino" / "model.bin").write_bytes(b"weights")
    assert engines.read_manifest(tmp_path)["default_engine"] == "openvino"
    assert list(engines.file_hashes(tmp_path)) == ["openvino/model.bin"]


@pytest.mark.parametrize(
    "section, message",
    [
        ({"engine": "tensorrt"}, "engine.engine"),
        ({"max_int8_loss_points": -0.1}, "engine.max_int8_loss_points"),
        ({"calibration_images": 0}, "engine.calibration_images"),
        ({"int8": "maybe"}, "engine.int8"),
        ({"precision": "int4"}, "engine.precision"),
    ],
)
def test_bad_engine_params_name_their_key(section, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_params({"engine": section})


def test_the_engine_params_default_to_auto_with_int8_judged_at_half_a_point():
    engine = parse_params({}).engine
    assert (engine.engine, engine.int8, engine.calibration_images, engine.max_int8_loss_points) == (
        "auto",
        True,
        300,
        0.5,
    )


def folder_with(tmp_path, default_engine: str, *engine_names: str):
    """An engine folder holding fp32 model files for ``engine_names`` (empty: only their
    presence is read) and a manifest naming ``default_engine``."""
    for engine in engine_names:
        for path in engines.model_files(tmp_path, engine, "fp32"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    (tmp_path / ENGINE_MANIFEST).write_text(json.dumps({"default_engine": default_engine}))
    return tmp_path


def test_auto_opens_a_folder_on_the_engine_it_was_exported_for(tmp_path, monkeypatch):
    """export-engine converts only the serving engine: a server left at auto must open an
    ONNX-only folder on ONNX Runtime, whatever the default engine is."""
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    onnx_only = folder_with(tmp_path / "onnx", "onnxruntime", "onnxruntime")
    assert engines.folder_engine(onnx_only, "auto") == "onnxruntime"
    both = folder_with(tmp_path / "both", "openvino", "onnxruntime", "openvino")
    assert engines.folder_engine(both, "auto") == "openvino"
    assert engines.folder_engine(both, "onnxruntime") == "onnxruntime"  # asked by name
    monkeypatch.setenv(engines.ENGINE_ENV, "onnxruntime")
    assert engines.folder_engine(both) == "onnxruntime"


def test_a_folder_without_the_asked_engine_names_the_one_it_has(tmp_path):
    onnx_only = folder_with(tmp_path, "onnxruntime", "onnxruntime")
    with pytest.raises(MissingInputError, match="no fp32 openvino model.*it serves onnxruntime"):
        engines.open_predictor(onnx_only, "openvino", "fp32")
