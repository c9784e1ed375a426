"""The ``export-engine`` step: the winning classifier on the fast inference engine (DVC
stage ``export-engine``), which the test evaluation measures and registration carries."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from image_finetune.components.runtime import component, read_params


@component
def export_engine(
    engine: dict,
    evaluate: dict,
    gate: dict,
    train: dict,
    dataset: Input[Dataset],
    classifier: Input[Model],
    engine_folder: Output[Artifact],
) -> None:
    """ONNX and OpenVINO fp32 models checked against Keras on test, an int8 variant judged
    beside fp32 on test; ``engine_folder`` holds them and engine.json, which says what
    serves (the default engine and its serving precision)."""
    from pathlib import Path

    from image_finetune.steps.export_engine import export_engine
    from image_finetune.steps.layout import MODEL_FILE

    manifest = export_engine(
        read_params(engine=engine, evaluate=evaluate, gate=gate, train=train),
        Path(dataset.path),
        Path(classifier.path) / MODEL_FILE,
        Path(engine_folder.path),
    )
    int8 = manifest["int8"] or {}
    engine_folder.metadata.update(
        default_engine=manifest["default_engine"],
        serving_precision=manifest["serving_precision"],
        **{
            f"int8_{key}": int8[key]
            for key in ("accuracy", "loss_points", "servable")
            if key in int8
        },
    )
