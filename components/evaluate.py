"""The ``evaluate`` step: on validation inside the retrain loop, on test once at the end."""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.runtime import read_params, step


@step
def evaluate_classifier(
    split: str,
    evaluate: str,
    train: str,
    dataset: Input[Dataset],
    classifier: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
) -> None:
    """Evaluate a classifier on one split: metrics, confusion matrix, gallery, HTML report.

    ``evaluation`` is the library's whole output folder (details.json, predictions.npz, ...),
    which the gates read; the other outputs show the same results in the KFP UI, with the
    library's metrics.json, confusion_matrix.json and report.html as their files.
    """
    import shutil
    from pathlib import Path

    from image_finetune.data.canonical import load_split, read_manifest
    from image_finetune.evaluate import evaluate_model
    from image_finetune.train import MODEL_FILE

    params = read_params(evaluate=evaluate, train=train)
    data_dir, out_dir = Path(dataset.path), Path(evaluation.path)
    loaded = load_split(data_dir, split)
    class_names = read_manifest(data_dir)["class_names"]
    rung = int(classifier.metadata["rung"])  # metadata numbers come back as floats
    results = evaluate_model(
        Path(classifier.path) / MODEL_FILE, loaded.images, loaded.labels, class_names,
        params.evaluate, out_dir, f"Rung {rung} ({classifier.metadata['rung_name']}) on {split}",
        params.train.seed,
    )
    for name, artifact in (("report.html", report), ("metrics.json", metrics),
                           ("confusion_matrix.json", confusion)):
        shutil.copyfile(out_dir / name, artifact.path)
    confusion.log_confusion_matrix(class_names, results["confusion_matrix"])
    low, high = results["accuracy_ci95"]
    scalars = {**results, "accuracy_ci95_low": low, "accuracy_ci95_high": high,
               **{f"latency_{k}": v for k, v in results["latency"].items()}}
    for name, value in scalars.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics.log_metric(name, value)
    evaluation.metadata.update(split=split, rung=rung, accuracy=results["accuracy"],
                               macro_f1=results["macro_f1"], count=results["count"])
