"""The ``evaluate`` step: on validation inside the retrain loop, on test once at the end."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from image_finetune.components.runtime import component, read_params


@component
def evaluate_classifier(
    split: str,
    evaluate: dict,
    train: dict,
    dataset: Input[Dataset],
    classifier: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    engine_folder: Input[Artifact] = None,
) -> None:
    """Evaluate a classifier on one split: metrics, confusion matrix, gallery, HTML report.

    ``evaluation`` is the step's whole output folder (details.json, predictions.npz, ...),
    which the gates read; the other outputs show the same results in the KFP UI.
    ``engine_folder``, the export-engine step's output, is what the test evaluation measures:
    the engine and precision that will serve. A validation evaluation uses the scores the
    train-rung step recorded beside the classifier on its cached features, where there are
    some for that model file and those labels, and runs the classifier on Keras otherwise.
    """
    import shutil
    from pathlib import Path

    from image_finetune.steps.evaluate import evaluate_classifier, flatten_metrics
    from image_finetune.steps.layout import (
        CONFUSION_JSON,
        METRICS_FILE,
        MODEL_FILE,
        REPORT_HTML,
    )

    rung = int(classifier.metadata["rung"])  # metadata numbers come back as floats
    out = Path(evaluation.path)
    results = evaluate_classifier(
        read_params(evaluate=evaluate, train=train),
        Path(dataset.path),
        Path(classifier.path) / MODEL_FILE,
        out,
        split,
        f"Rung {rung} ({classifier.metadata['rung_name']}) on {split}",
        engine=Path(engine_folder.path) if engine_folder else None,
    )
    for name, artifact in (
        (REPORT_HTML, report),
        (METRICS_FILE, metrics),
        (CONFUSION_JSON, confusion),
    ):
        shutil.copyfile(out / name, artifact.path)
    confusion.log_confusion_matrix(list(results["per_class"]), results["confusion_matrix"])
    for name, value in flatten_metrics(results).items():
        metrics.log_metric(name, value)
    evaluation.metadata.update(
        split=split,
        rung=rung,
        accuracy=results["accuracy"],
        macro_f1=results["macro_f1"],
        count=results["count"],
        engine=results["engine"],
        precision=results["precision"],
    )
