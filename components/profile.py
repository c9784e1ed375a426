"""The ``profile`` step: the winner's reference profile for monitoring (DVC stage
``profile``), registered with the version."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from image_finetune.components.runtime import component, read_params


@component
def profile_classifier(
    evaluate: dict,
    train: dict,
    dataset: Input[Dataset],
    classifier: Input[Model],
    profile: Output[Artifact],
    engine_folder: Input[Artifact] = None,
) -> None:
    """Summarise the validation images with the classifier: the reference profile
    (profile.json + profile.npz) that the register step logs with the version. Given
    ``engine_folder`` (the export-engine step's output), on the engine and precision that
    will serve, as the server summarises its traffic."""
    from pathlib import Path

    from image_finetune.steps.layout import MODEL_FILE
    from image_finetune.steps.profile import profile_classifier

    made = profile_classifier(
        read_params(evaluate=evaluate, train=train),
        Path(dataset.path),
        Path(classifier.path) / MODEL_FILE,
        Path(profile.path),
        Path(engine_folder.path) if engine_folder else None,
    )
    profile.metadata.update(
        engine=made.engine,
        precision=made.precision,
        images=len(made),
        dimensions=made.dimensions,
        mean_confidence=float(made.probabilities.max(axis=1).mean()),
    )
