"""The ``register`` step: MLflow registration and promotion (DVC stage ``register``)."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components.runtime import read_params, step


@step
def register_classifier(
    data: str,
    validate: str,
    augment: str,
    model: str,
    train: str,
    evaluate: str,
    gate: str,
    registry: str,
    pipeline_run_id: str,
    lineage: dict,
    classifier: Input[Model],
    dataset: Input[Dataset],
    evaluation: Input[Artifact],
    decision: Input[Artifact],
    registration: Output[Markdown],
) -> None:
    """Register the classifier that passed the final gate as ``challenger``, and promote it
    to ``champion`` when it beats the current one. Every section is passed: the registered
    version is tagged with the hash of the whole configuration."""
    from pathlib import Path

    from image_finetune.registry import register_candidate
    from image_finetune.train import MODEL_FILE

    params = read_params(data=data, validate=validate, augment=augment, model=model, train=train,
                         evaluate=evaluate, gate=gate, registry=registry)
    outcome = register_candidate(
        params, Path(classifier.path) / MODEL_FILE, Path(evaluation.path), Path(decision.path),
        Path(dataset.path), pipeline_run_id, lineage,
    )
    registration.metadata.update(outcome)
    Path(registration.path).write_text(
        f"# {params.registry.model_name} v{outcome['version']}\n\n"
        + "\n".join(f"- {key}: {value}" for key, value in outcome.items()) + "\n")
