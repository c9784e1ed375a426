"""The ``register`` step: MLflow registration and promotion (DVC stage ``register``)."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from image_finetune.components.runtime import component, read_params


@component
def register_classifier(
    data: dict,
    validate: dict,
    augment: dict,
    model: dict,
    train: dict,
    evaluate: dict,
    gate: dict,
    registry: dict,
    engine: dict,
    pipeline_run_id: str,
    lineage: dict,
    classifier: Input[Model],
    dataset: Input[Dataset],
    validation: Input[Artifact],
    evaluation: Input[Artifact],
    decision: Input[Artifact],
    profile: Input[Artifact],
    engine_folder: Input[Artifact],
    registration: Output[Artifact],
    summary: Output[Markdown],
) -> None:
    """Register the classifier that passed the final gate as ``challenger``, and promote it
    to ``champion`` when it beats the current one. Every section is passed: the registered
    version is tagged with the hash of the whole configuration. ``registration`` is the
    outcome as JSON, ``summary`` the same for the KFP UI. ``profile``, the reference profile,
    is logged with the version for monitoring; ``engine_folder``, the export-engine step's
    output, as its ``engine/`` artifact (what the server runs)."""
    from pathlib import Path

    from image_finetune.steps.layout import MODEL_FILE
    from image_finetune.steps.register import register_classifier

    params = read_params(
        data=data,
        validate=validate,
        augment=augment,
        model=model,
        train=train,
        evaluate=evaluate,
        gate=gate,
        registry=registry,
        engine=engine,
    )
    outcome = register_classifier(
        params,
        Path(dataset.path),
        Path(evaluation.path),
        Path(decision.path),
        Path(registration.path),
        Path.cwd(),
        model=Path(classifier.path) / MODEL_FILE,
        validation=Path(validation.path),
        profile=Path(profile.path),
        pipeline_run_id=pipeline_run_id,
        lineage_extra=lineage,
        engine=Path(engine_folder.path),
    )
    registration.metadata.update(outcome)
    Path(summary.path).write_text(
        f"# {params.registry.model_name} v{outcome['version']}\n\n"
        + "\n".join(f"- {key}: {value}" for key, value in outcome.items())
        + "\n"
    )
