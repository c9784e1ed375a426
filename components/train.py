"""The ``train-rung`` step: one rung of the ladder (one attempt of DVC's ``train`` stage)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from image_finetune.components.runtime import component, read_params


@component
def train_rung(
    index: int,
    model: dict,
    train: dict,
    augment: dict,
    cache_dir: str,
    dataset: Input[Dataset],
    classifier: Output[Model],
    metrics: Output[Metrics],
    warm_start: Input[Model] = None,
) -> None:
    """Train rung ``index``, warm-started from the previous rung's classifier if given.

    ``classifier`` is a folder: model.keras, history.csv, result.json. ``cache_dir`` keeps
    the feature cache, checkpoints and finished attempts (so a retried or repeated attempt
    resumes or is reused); empty means a scratch folder that ends with the task. A relative
    ``model.weights`` is resolved against the working directory. ``metrics`` shows the
    attempt's figures in the KFP UI; its file is the step's result.json.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from image_finetune.steps.layout import MODEL_FILE, RESULT_FILE
    from image_finetune.steps.train_rung import train_rung

    result = train_rung(
        read_params(model=model, train=train, augment=augment),
        index,
        Path(dataset.path),
        Path(classifier.path),
        Path(cache_dir or tempfile.mkdtemp(prefix="image-finetune-")),
        Path.cwd(),
        Path(warm_start.path) / MODEL_FILE if warm_start else None,
    )
    classifier.metadata.update(
        rung=index,
        rung_name=result.rung,
        mode=result.mode,
        epochs_run=result.epochs_run,
        backend=result.backend,
    )
    for name in (
        "best_val_accuracy",
        "epochs_run",
        "train_seconds",
        "embed_seconds",
        "images_per_second",
        "trainable_params",
    ):
        metrics.log_metric(name, getattr(result, name))
    shutil.copyfile(Path(classifier.path) / RESULT_FILE, metrics.path)
