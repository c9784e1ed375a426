"""The ``augment`` step (DVC stage ``augment``)."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from image_finetune.components.runtime import component, read_params


@component
def preview_augmentation(
    augment: dict,
    train: dict,
    dataset: Input[Dataset],
    policy: Output[Artifact],
    preview: Output[HTML],
) -> None:
    """Write the augmentation policy and a preview grid of augmented real images.

    ``policy`` holds policy.json and preview.png; ``preview`` shows the grid in the KFP UI.
    """
    import base64
    from pathlib import Path

    from image_finetune.steps.augment import preview_augmentation

    grid = preview_augmentation(
        read_params(augment=augment, train=train), Path(dataset.path), Path(policy.path)
    )
    encoded = base64.b64encode(grid.read_bytes()).decode()
    Path(preview.path).write_text(
        f"<!doctype html><title>Augmentation preview</title>"
        f"<img alt='augmentation preview' src='data:image/png;base64,{encoded}'>\n"
    )
