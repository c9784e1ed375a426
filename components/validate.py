"""The ``validate`` step (DVC stage ``validate``)."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from image_finetune.components.runtime import component, read_params


@component
def validate_data(
    validate: dict,
    dataset: Input[Dataset],
    validation: Output[Artifact],
    summary: Output[Markdown],
) -> None:
    """Run the Great Expectations suites; fail on any blocking expectation.

    ``validation`` holds result.json, the Data Docs and the fact tables; ``summary`` is the
    readable list of what was checked, for the KFP UI.
    """
    from pathlib import Path

    from image_finetune.steps.validate import validate_data

    report = validate_data(
        read_params(validate=validate), Path(dataset.path), Path(validation.path)
    )
    Path(summary.path).write_text(f"```\n{report.summary()}\n```\n")
    validation.metadata.update(expectations=report.evaluated, warnings=len(report.warnings))
