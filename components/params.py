"""The ``check-params`` step: the run's parameters against the typed config, before any work."""

from components.runtime import read_params, step


@step
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
    from image_finetune.errors import ConfigError

    params = read_params(data=data, validate=validate, augment=augment, model=model, train=train,
                         evaluate=evaluate, gate=gate, registry=registry)
    if len(params.train.ladder) != rungs:
        raise ConfigError(
            f"train.ladder has {len(params.train.ladder)} rungs but this pipeline was compiled "
            f"for {rungs}: recompile it from these params (python -m pipelines.cli compile)")
    print(params.model_dump_json(indent=2, by_alias=True))
