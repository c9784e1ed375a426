"""The frozen plan of a rung: settled once from the params, the rung's index and the facts
of the data and the runtime, without rewriting the params; and the classifier's parts as
its builder names them."""

from __future__ import annotations

import dataclasses

import pytest

from image_finetune.config import Params, parse_params
from image_finetune.training.plan import DataFacts, RuntimeFacts, plan_rung

CPU = RuntimeFacts("tensorflow", accelerated=False)
SMALL = DataFacts(train_size=240, validation_size=60, digest="data")


def test_the_plan_adapts_the_rung_to_small_data_and_leaves_the_params_alone():
    params = Params()
    before = params.model_dump()
    plan = plan_rung(params, 0, SMALL, CPU)
    assert params.model_dump() == before
    assert plan.written == params.train.ladder[0]
    assert (plan.rung.batch_size, plan.rung.epochs) == (30, 38)  # 8 steps an epoch, 300 steps
    assert plan.image_size == params.model.image_size == 96
    assert plan.mirrors_cached and plan.engine == "tensorflow"  # too few images to convert


def test_the_plan_scales_the_rung_to_the_replicas():
    params = parse_params(
        {
            "train": {
                "batch_scaling": "per_replica",
                "ladder": [
                    {"name": "head", "batch_size": 32, "learning_rate": 0.01, "image_size": 64}
                ],
            }
        }
    )
    plan = plan_rung(params, 0, SMALL, RuntimeFacts("jax", True, 2, "mirrored x2"))
    assert (plan.rung.batch_size, plan.rung.learning_rate) == (64, 0.02)
    assert plan.image_size == 64 and plan.runtime.layout == "mirrored x2"


def test_the_plan_is_frozen():
    plan = plan_rung(Params(), 1, SMALL, CPU)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed = 1  # type: ignore[misc]


def test_the_builder_names_the_parts_and_a_saved_classifier_reads_back_the_same(tmp_path):
    import keras

    from image_finetune.config import ModelParams
    from image_finetune.inference import load_classifier
    from image_finetune.training.model import build_classifier, classifier_parts

    inputs = keras.Input((16, 16, 3))
    backbone = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="conv")(inputs), name="tiny")
    built = build_classifier(backbone, 3, ModelParams(weights="none"), 8)
    assert built.resize is not None and built.outputs is built.model.outputs[0]
    path = tmp_path / "model.keras"
    built.model.save(path)
    loaded = classifier_parts(load_classifier(path))
    for part in ("backbone", "resize", "preprocess", "head", "pool", "dropout", "softmax"):
        assert getattr(loaded, part).name == getattr(built, part).name
    with pytest.raises(ValueError, match="not built by build_classifier"):
        classifier_parts(backbone)
