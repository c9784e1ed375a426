"""The training cache's keys: derived from the import closure of the code that shapes the
cache (any edit there invalidates it), and recording the engine the frozen stem embeds on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from image_finetune import codegraph
from image_finetune.config import Params, parse_params
from image_finetune.errors import ConfigError
from image_finetune.training import plan as rung_plan
from image_finetune.training.features import (
    MIN_ENGINE_IMAGES,
    choose_stem_engine,
    default_stem_engine,
)
from image_finetune.training.plan import DataFacts, RuntimeFacts, cache_keys, plan_rung

TRAIN_RUNG = "image_finetune.steps.train_rung"
FEATURE_CODE = "image_finetune.training.fit"
ON_A_CPU = RuntimeFacts("tensorflow", accelerated=False)


def keys_of(params: Params, index: int, engine: str, step: str | None = None):
    """The cache keys of rung ``index`` on CIFAR-10-sized data, its frozen parts on
    ``engine``."""
    plan = plan_rung(params, index, DataFacts(45_000, 5_000, "data"), ON_A_CPU)
    plan = replace(plan, engine=engine)
    return cache_keys(plan, None, None, step=step)


@pytest.fixture
def edited(monkeypatch) -> set[Path]:
    """The files edited from now on: reading one's text gives it with a comment line added,
    as if a developer had edited it (the file itself is untouched)."""
    files: set[Path] = set()
    read_text = Path.read_text

    def reading(self, *args, **kwargs):
        text = read_text(self, *args, **kwargs)
        return text + "\n# edited\n" if self.resolve() in files else text

    monkeypatch.setattr(Path, "read_text", reading)
    return files


def module_path(name: str) -> Path:
    return codegraph.module_files()[name]


def test_editing_any_module_in_the_closure_changes_the_key(edited):
    """Every module training/fit.py imports, directly or not, is in the feature key: each
    module of the closure is edited in turn."""
    modules = sorted(codegraph.closure(FEATURE_CODE))
    assert len(modules) > 10
    before = rung_plan.code_fingerprint()
    unchanged = []
    for name in modules:
        edited.clear()
        edited.add(module_path(name).resolve())
        if rung_plan.code_fingerprint() == before:
            unchanged.append(name)
    assert unchanged == []


@pytest.mark.parametrize(
    "module",
    [
        "inference",
        "efficientnet_lite",
        "training.features",
        "training.model",
        "training.augment",
        "training.fit",
        "training.plan",
        "engines",
    ],
)
def test_the_code_that_computes_the_features_is_in_their_key(module, edited):
    """inference.py (predict_batches embeds the features) and efficientnet_lite.py (a
    backbone) were missing from the hand-kept list this replaces (issue 28); engines.py
    embeds on the fast engine."""
    before = rung_plan.code_fingerprint()
    edited.add(module_path(f"image_finetune.{module}").resolve())
    assert rung_plan.code_fingerprint() != before


def test_the_step_that_adapts_the_rung_shapes_the_attempt_not_the_features(edited):
    params = Params()
    keys = keys_of(params, 1, "openvino", step=TRAIN_RUNG)
    edited.add(module_path(TRAIN_RUNG).resolve())
    again = keys_of(params, 1, "openvino", step=TRAIN_RUNG)
    assert again.features == keys.features  # the features: train_rung.py does not compute them
    assert again.attempt != keys.attempt  # the attempt: the step runs it


def test_a_module_outside_the_closure_leaves_the_key_alone(edited):
    outside = "image_finetune.serving.app"
    assert outside not in codegraph.closure(FEATURE_CODE)
    before = rung_plan.code_fingerprint()
    edited.add(module_path(outside).resolve())
    assert rung_plan.code_fingerprint() == before


def stem_engine(params: Params, train_size: int, validation_size: int) -> str:
    """The engine the plan of rung 0 embeds on, with TensorFlow on a CPU."""
    return plan_rung(params, 0, DataFacts(train_size, validation_size, "data"), ON_A_CPU).engine


def with_stem_engine(engine: str) -> Params:
    return Params().model_copy(
        update={"train": Params().train.model_copy(update={"stem_engine": engine})}
    )


def test_the_feature_key_records_the_stem_engine():
    keys = {
        engine: keys_of(Params(), 0, engine) for engine in ("tensorflow", "onnxruntime", "openvino")
    }
    assert len({key.features for key in keys.values()}) == 3
    assert len({key.attempt for key in keys.values()}) == 3


def test_the_params_choose_the_stem_engine(monkeypatch):
    """CIFAR-10's 45,000 training images (and their mirrored copies) embed on the fast engine;
    a small subset on Keras (converting would take longer than embedding); a named engine is
    used whatever the size. The serving engine's environment variable plays no part."""
    monkeypatch.delenv("IMAGE_FINETUNE_ENGINE", raising=False)
    fast = default_stem_engine()
    monkeypatch.setenv("IMAGE_FINETUNE_ENGINE", "tensorflow")
    assert stem_engine(with_stem_engine("auto"), 45_000, 5_000) == fast
    assert stem_engine(with_stem_engine("auto"), 240, 60) == "tensorflow"
    assert stem_engine(with_stem_engine("onnxruntime"), 240, 60) == "onnxruntime"
    assert stem_engine(with_stem_engine("tensorflow"), 45_000, 5_000) == "tensorflow"


def test_auto_embeds_on_onnxruntime_the_faster_stem_engine_not_the_serving_default(
    monkeypatch,
):
    """ONNX Runtime embeds the stem faster than OpenVINO (2.46x vs 1.97x Keras): auto takes
    it where it is installed, whatever engine serves; OpenVINO where it alone is."""
    import image_finetune.training.features as features

    monkeypatch.delenv("IMAGE_FINETUNE_ENGINE", raising=False)
    installed = {"onnxruntime", "openvino"}
    monkeypatch.setattr(features, "engine_available", lambda engine: engine in installed)
    many = MIN_ENGINE_IMAGES
    assert choose_stem_engine("auto", "tensorflow", False, many) == "onnxruntime"
    installed.discard("onnxruntime")
    assert choose_stem_engine("auto", "tensorflow", False, many) == "openvino"
    installed.clear()
    assert choose_stem_engine("auto", "tensorflow", False, many) == "tensorflow"


def test_auto_embeds_on_the_fast_engine_only_for_tensorflow_on_a_cpu(monkeypatch):
    monkeypatch.delenv("IMAGE_FINETUNE_ENGINE", raising=False)
    fast, many = default_stem_engine(), MIN_ENGINE_IMAGES
    assert choose_stem_engine("auto", "tensorflow", False, many) == fast
    assert choose_stem_engine("auto", "tensorflow", False, many - 1) == "tensorflow"
    assert choose_stem_engine("auto", "tensorflow", True, many) == "tensorflow"
    assert choose_stem_engine("auto", "jax", False, many) == "tensorflow"
    assert choose_stem_engine("onnxruntime", "jax", True, 1) == "onnxruntime"


def test_an_unknown_stem_engine_is_refused_with_the_choices():
    with pytest.raises(
        ConfigError,
        match=r"train\.stem_engine: Input should be 'auto', "
        r"'tensorflow', 'onnxruntime' or 'openvino'",
    ):
        parse_params({"train": {"stem_engine": "tensorrt"}})
