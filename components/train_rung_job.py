"""The ``train-job`` step: one rung of the ladder as a distributed job of Kubeflow's training
operator (a ``TFJob``) or of Kubeflow Trainer v2 (a ``TrainJob``; ``compile --workers N
--launcher``), launched and followed from this task."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from image_finetune.components.runtime import component, read_params


@component
def train_rung_job(
    index: int,
    model: dict,
    train: dict,
    augment: dict,
    cache_dir: str,
    workers: int,
    gpus: int,
    image: str,
    cache_pvc: str,
    cache_mount: str,
    run_id: str,
    launcher: str,
    runtime: str,
    timeout_seconds: int,
    tolerations: list,
    node_selector: dict,
    dataset: Input[Dataset],
    classifier: Output[Model],
    metrics: Output[Metrics],
    warm_start: Input[Model] = None,
) -> None:
    """Train rung ``index`` on ``workers`` pods of ``image`` with ``gpus`` GPUs each, the
    PVC ``cache_pvc`` mounted at ``cache_mount`` (as on this task); the job is named after
    ``run_id`` and the rung; ``launcher`` is its kind (``tfjob``, or ``trainjob`` run by the
    ClusterTrainingRuntime ``runtime``), deleted after ``timeout_seconds`` (0: 48 h); its GPU
    pods get ``tolerations`` and ``node_selector``. The task's log shows the job's state and
    its chief's log; ``classifier`` and ``metrics`` are what ``train_rung`` hands on."""
    import shutil
    from pathlib import Path

    from image_finetune.steps.layout import MODEL_FILE, RESULT_FILE
    from image_finetune.steps.train_job import (
        JobPolicy,
        Launch,
        Placement,
        TrainingJobs,
        exit_on_termination,
        job_kind,
        train_job,
    )

    exit_on_termination()  # a cancelled run deletes its job: see train_job
    result = train_job(
        read_params(model=model, train=train, augment=augment),
        index,
        Path(dataset.path),
        Path(classifier.path),
        Path(cache_dir),
        Path.cwd(),
        Launch(
            run_id,
            workers,
            gpus,
            image,
            cache_pvc,
            cache_mount,
            JobPolicy(timeout_seconds=timeout_seconds or JobPolicy.timeout_seconds),
            launcher=launcher,
            runtime=runtime,
            placement=Placement(tuple(tolerations), tuple(sorted(node_selector.items()))),
        ),
        TrainingJobs.in_cluster(job_kind(launcher)),
        Path(warm_start.path) / MODEL_FILE if warm_start else None,
    )
    classifier.metadata.update(
        rung=index,
        rung_name=result["rung"],
        mode=result["mode"],
        epochs_run=result["epochs_run"],
        backend=result["backend"],
        workers=workers,
    )
    for name in (
        "best_val_accuracy",
        "epochs_run",
        "train_seconds",
        "embed_seconds",
        "images_per_second",
        "trainable_params",
    ):
        metrics.log_metric(name, result[name])
    shutil.copyfile(Path(classifier.path) / RESULT_FILE, metrics.path)
