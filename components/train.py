"""The ``train`` step for one rung of the ladder (one attempt of DVC's ``train`` stage)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.runtime import read_params, step


@step
def train_rung(
    index: int,
    data: str,
    model: str,
    train: str,
    augment: str,
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
    attempt's figures in the KFP UI; its file is the library's result.json.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from image_finetune.train import MODEL_FILE
    from image_finetune.train import train_rung as run

    params = read_params(data=data, model=model, train=train, augment=augment)
    result = run(
        params, index, Path(dataset.path), Path(classifier.path), Path.cwd(),
        Path(cache_dir or tempfile.mkdtemp(prefix="image-finetune-cache-")),
        Path(warm_start.path) / MODEL_FILE if warm_start else None,
    )
    classifier.metadata.update(rung=index, rung_name=result.rung, mode=result.mode,
                               epochs_run=result.epochs_run, backend=result.backend)
    for name in ("best_val_accuracy", "epochs_run", "train_seconds", "embed_seconds",
                 "images_per_second", "trainable_params"):
        metrics.log_metric(name, getattr(result, name))
    shutil.copyfile(Path(classifier.path) / "result.json", metrics.path)
