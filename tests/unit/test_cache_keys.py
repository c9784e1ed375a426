"""The training cache's keys: derived from the import closure of the code that shapes the
cache (any edit there invalidates it), and recording the engine the frozen stem embeds on."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_finetune import codegraph, train
from image_finetune.config import Params, parse_params
from image_finetune.errors import ConfigError
from image_finetune.features import MIN_ENGINE_IMAGES, choose_stem_engine

TRAIN_RUNG = "image_finetune.steps.train_rung"


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
    """Every module train.py imports, directly or not, is in the feature key: each module of
    the closure is edited in turn."""
    modules = sorted(codegraph.closure("image_finetune.train"))
    assert len(modules) > 10
    before = train.code_fingerprint()
    unchanged = []
    for name in modules:
        edited.clear()
        edited.add(module_path(name).resolve())
        if train.code_fingerprint() == before:
            unchanged.append(name)
    assert unchanged == []


@pytest.mark.parametrize("module", ["inference", "efficientnet_lite", "features", "model",
                                    "augment", "train", "engines"])
def test_the_code_that_computes_the_features_is_in_their_key(module, edited):
    """inference.py (predict_batches embeds the features) and efficientnet_lite.py (a
    backbone) were missing from the hand-kept list this replaces (issue 28); engines.py
    embeds on the fast engine."""
    before = train.code_fingerprint()
    edited.add(module_path(f"image_finetune.{module}").resolve())
    assert train.code_fingerprint() != before


def test_the_step_that_adapts_the_rung_shapes_the_attempt_not_the_features(edited):
    params = Params()
    keys = train.attempt_keys(params, 1, None, "data", None, step=TRAIN_RUNG, engine="openvino")
    edited.add(module_path(TRAIN_RUNG).resolve())
    again = train.attempt_keys(params, 1, None, "data", None, step=TRAIN_RUNG,
                               engine="openvino")
    assert again[0] == keys[0]  # the features: train_rung.py does not compute them
    assert again[1] != keys[1]  # the attempt: fit_to_data adapts its rung


def test_a_module_outside_the_closure_leaves_the_key_alone(edited):
    outside = "image_finetune.serving.app"
    assert outside not in codegraph.closure("image_finetune.train")
    before = train.code_fingerprint()
    edited.add(module_path(outside).resolve())
    assert train.code_fingerprint() == before


def with_stem_engine(engine: str) -> Params:
    return Params().model_copy(update={"train": Params().train.model_copy(
        update={"stem_engine": engine})})


def test_the_feature_key_records_the_stem_engine():
    keys = {engine: train.attempt_keys(Params(), 0, None, "data", None, engine=engine)
            for engine in ("tensorflow", "onnxruntime", "openvino")}
    assert len({features for features, _ in keys.values()}) == 3
    assert len({attempt for _, attempt in keys.values()}) == 3


def test_the_params_choose_the_stem_engine(monkeypatch):
    """CIFAR-10's 45,000 training images (and their mirrored copies) embed on the fast engine;
    a small subset on Keras (converting would take longer than embedding); a named engine is
    used whatever the size. The serving engine's environment variable plays no part."""
    from image_finetune.engines import resolve_engine

    monkeypatch.delenv("IMAGE_FINETUNE_ENGINE", raising=False)
    fast = resolve_engine("auto")
    monkeypatch.setenv("IMAGE_FINETUNE_ENGINE", "tensorflow")
    assert train.stem_engine(with_stem_engine("auto"), 45_000, 5_000) == fast
    assert train.stem_engine(with_stem_engine("auto"), 240, 60) == "tensorflow"
    assert train.stem_engine(with_stem_engine("onnxruntime"), 240, 60) == "onnxruntime"
    assert train.stem_engine(with_stem_engine("tensorflow"), 45_000, 5_000) == "tensorflow"


def test_auto_embeds_on_the_fast_engine_only_for_tensorflow_on_a_cpu(monkeypatch):
    from image_finetune.engines import resolve_engine

    monkeypatch.delenv("IMAGE_FINETUNE_ENGINE", raising=False)
    fast, many = resolve_engine("auto"), MIN_ENGINE_IMAGES
    assert choose_stem_engine("auto", "tensorflow", False, many) == fast
    assert choose_stem_engine("auto", "tensorflow", False, many - 1) == "tensorflow"
    assert choose_stem_engine("auto", "tensorflow", True, many) == "tensorflow"
    assert choose_stem_engine("auto", "jax", False, many) == "tensorflow"
    assert choose_stem_engine("onnxruntime", "jax", True, 1) == "onnxruntime"


def test_an_unknown_stem_engine_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"train\.stem_engine: Input should be 'auto', "
                                          r"'tensorflow', 'onnxruntime' or 'openvino'"):
        parse_params({"train": {"stem_engine": "tensorrt"}})
