"""The knobs tuned per run, apart from and back into their sections (image_finetune.knobs):
the split gives back the params it was made from, a typed override lands where a user
expects, nulls are left out without changing a value, and what does not belong is refused
with the key's params.yaml path."""

import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from image_finetune.config import Params, Rung, load_params
from image_finetune.errors import ConfigError
from image_finetune.knobs import (
    SPELLED_NULLS,
    knob_values,
    merge_knobs,
    parse_sections,
    section_remainders,
)
from image_finetune.steps.set_rung import set_rung

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(ROOT / "params.yaml", use_env=False)


def merged_back(params: Params, **overrides) -> Params:
    knobs = {**knob_values(params), **overrides}
    return parse_sections(merge_knobs(section_remainders(params), knobs), "test")


@pytest.mark.parametrize("name", ["params.yaml", "params-gpu.yaml"])
def test_the_knobs_and_the_remainders_give_back_the_params(name):
    params = load_params(ROOT / name, use_env=False)
    assert merged_back(params) == params


def test_the_knobs_are_the_values_tuned_per_run(params):
    assert knob_values(params) == {
        "data_path": "../shared/data/cifar10-jpeg.tar.gz",
        "backbone": "mobilenet_v2",
        "model_image_size": 96,
        "min_accuracy": 0.85,
        "min_macro_f1": 0.85,
        "min_class_recall": 0.65,
        "max_latency_p95_ms": 200.0,
        "rung0_epochs": 8,
        "rung0_learning_rate": 0.001,
        "rung1_epochs": 4,
        "rung1_learning_rate": 0.0005,
    }


def test_a_typed_override_lands_in_its_section_and_nothing_else_changes(params):
    merged = merged_back(
        params, rung1_epochs=6, rung0_learning_rate=0.01, model_image_size=128, min_class_recall=0.5
    )
    raw = params.model_dump(mode="json", by_alias=True)
    raw["train"]["ladder"][1]["epochs"], raw["train"]["ladder"][0]["learning_rate"] = 6, 0.01
    raw["model"]["image_size"], raw["gate"]["min_class_recall"] = 128, 0.5
    assert merged == Params.model_validate(raw)
    assert merged.data.image_size == params.data.image_size  # not the model's


def test_a_null_left_out_takes_its_default_which_is_the_same_null(params):
    remainders = section_remainders(params)
    assert params.data.max_per_class is None and "max_per_class" not in remainders["data"]
    assert "unfreeze_from" not in remainders["train"]["ladder"][0]
    merged = merged_back(params)
    assert merged.data.max_per_class is None and merged.train.ladder[0].unfreeze_from is None


def test_a_null_whose_default_is_not_null_is_spelled_and_read_back(params):
    no_boundary = params.model_copy(
        update={"train": params.train.model_copy(update={"cache_boundary": None})}
    )
    assert section_remainders(no_boundary)["train"]["cache_boundary"] == "none"
    assert merged_back(no_boundary).train.cache_boundary is None
    assert merged_back(params).train.cache_boundary == "block_12_add"


def nullable_with_other_default(model: type[BaseModel], prefix: str) -> set[str]:
    fields = set()
    for name, field in model.model_fields.items():
        nullable = typing.get_origin(field.annotation) in (typing.Union, types.UnionType) and type(
            None
        ) in typing.get_args(field.annotation)
        if nullable and field.default is not None:
            fields.add(f"{prefix}.{name}")
    return fields


def test_every_null_that_would_change_a_value_when_left_out_is_spelled():
    """A new nullable field with a non-null default must join SPELLED_NULLS (a rung's
    fields cannot: only section keys are spelled)."""
    found = nullable_with_other_default(Rung, "train.ladder.<k>")
    for name, field in Params.model_fields.items():
        found |= nullable_with_other_default(field.annotation, field.alias or name)
    assert found == {f"{section}.{key}" for section, key in SPELLED_NULLS}


def test_an_unknown_key_is_refused_by_the_typed_config_with_its_path(params):
    remainders = section_remainders(params)
    remainders["train"]["ladder"][1]["epoch"] = 6  # a typo for the knob
    with pytest.raises(
        ConfigError,
        match=r"train\.ladder\.1\.epoch: Extra inputs are not "
        r"permitted \(got 6\)",
    ):
        parse_sections(merge_knobs(remainders, knob_values(params)), "pipeline parameters")


def test_a_knob_is_refused_when_its_section_sets_it_too(params):
    remainders = section_remainders(params)
    remainders["gate"]["min_accuracy"] = 0.5
    with pytest.raises(
        ConfigError,
        match=r"gate\.min_accuracy is the pipeline parameter "
        r"min_accuracy; leave it out of the gate parameter",
    ):
        merge_knobs(remainders, knob_values(params))


def test_a_knob_for_a_rung_the_ladder_lacks_or_an_unknown_knob_is_refused(params):
    remainders = section_remainders(params)
    with pytest.raises(
        ConfigError,
        match=r"rung2_epochs: train\.ladder has 2 rung\(s\), no "
        r"rung 2",
    ):
        merge_knobs(remainders, {"rung2_epochs": 3})
    with pytest.raises(ConfigError, match="'epochs' is not a pipeline parameter"):
        merge_knobs(remainders, {"epochs": 3})


def test_set_rung_fills_in_one_rung_and_leaves_its_input_alone(params):
    train = section_remainders(params)["train"]
    filled = set_rung(train, 1, 6, 0.01)
    assert (filled["ladder"][1]["epochs"], filled["ladder"][1]["learning_rate"]) == (6, 0.01)
    assert "epochs" not in filled["ladder"][0] and "epochs" not in train["ladder"][1]
