"""The ``validate`` step (DVC stage ``validate``)."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components.runtime import step


@step
def validate_data(
    validate: str, dataset: Input[Dataset], validation: Output[Artifact],
    summary: Output[Markdown],
) -> None:
    """Run the Great Expectations suites; fail on any blocking expectation.

    ``validation`` holds result.json, the Data Docs and the fact tables; ``summary`` is the
    readable list of what was checked, for the KFP UI.
    """
    from pathlib import Path

    from image_finetune.config import ValidateParams
    from image_finetune.validation.suites import validate_dataset

    outcome = validate_dataset(Path(dataset.path), ValidateParams.model_validate_json(validate),
                               Path(validation.path))
    Path(summary.path).write_text(f"```\n{outcome.summary()}\n```\n")
    validation.metadata.update(expectations=outcome.evaluated, warnings=len(outcome.warnings))
