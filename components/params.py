"""The run's parameters: each rung's typed knobs put back into the train section
(``set-rung``), then the other knobs into theirs and the whole checked against the typed
config before any work (``check-params``), which hands every section on."""

from typing import NamedTuple

from image_finetune.components.runtime import component, read_params


@component
def set_rung(index: int, train: dict, epochs: int, learning_rate: float) -> dict:
    """The train section with rung ``index``'s epochs and learning rate in place."""
    from image_finetune.steps.set_rung import set_rung

    return set_rung(train, index, epochs, learning_rate)


@component
def check_params(
    rungs: int,
    data: dict,
    validate: dict,
    augment: dict,
    model: dict,
    train: dict,
    evaluate: dict,
    gate: dict,
    registry: dict,
    engine: dict,
    data_path: str,
    backbone: str,
    model_image_size: int,
    min_accuracy: float,
    min_macro_f1: float,
    min_class_recall: float,
    max_latency_p95_ms: float,
) -> NamedTuple(  # type: ignore[valid-type]
    "Sections",
    [
        ("data", dict),
        ("validate", dict),
        ("augment", dict),
        ("model", dict),
        ("train", dict),
        ("evaluate", dict),
        ("gate", dict),
        ("registry", dict),
        ("engine", dict),
    ],
):
    """Put the knobs in their sections and validate every section (``image-finetune
    check-params``); the ladder must have the number of rungs the pipeline was compiled for.
    Returns the sections every later step reads: validated, so the same values make the same
    cache keys however they were written."""
    from image_finetune.steps.check_params import check_params, merge_knobs, section_mappings

    sections = {
        "data": data,
        "validate": validate,
        "augment": augment,
        "model": model,
        "train": train,
        "evaluate": evaluate,
        "gate": gate,
        "registry": registry,
        "engine": engine,
    }
    knobs = {
        "data_path": data_path,
        "backbone": backbone,
        "model_image_size": model_image_size,
        "min_accuracy": min_accuracy,
        "min_macro_f1": min_macro_f1,
        "min_class_recall": min_class_recall,
        "max_latency_p95_ms": max_latency_p95_ms,
    }
    params = read_params(**merge_knobs(sections, knobs))
    print(check_params(params, rungs))
    mappings = section_mappings(params)
    return tuple(mappings[name] for name in sections)  # the order of the outputs
