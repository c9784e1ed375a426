"""The ``check-params`` step: the run's parameters against the typed config, before any work."""

from components.runtime import component, read_params


@component
def check_params(
    rungs: int,
    data: str,
    validate: str,
    augment: str,
    model: str,
    train: str,
    evaluate: str,
    gate: str,
    registry: str,
) -> None:
    """Validate every section (``image-finetune check-params``); the ladder must have the
    number of rungs the pipeline was compiled for."""
    from image_finetune.steps.check_params import check_params

    print(check_params(read_params(data=data, validate=validate, augment=augment, model=model,
                                   train=train, evaluate=evaluate, gate=gate,
                                   registry=registry), rungs))
