"""The ``monitor`` step: images or a server's recorded windows against a registered
version's reference profile. The monitoring pipeline retrains only where it says so."""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Input, Metrics, Output

from image_finetune.components.runtime import component, read_params


@component
def monitor_drift(
    evaluate: dict,
    registry: dict,
    source: Input[Artifact],
    report: Output[HTML],
    drift_report: Output[Artifact],
    metrics: Output[Metrics],
    alias: str = "champion",
    version: str = "",
    alpha: float = 0.05,
    permutations: int = 500,
    min_labels: int = 200,
    labels: Input[Artifact] = None,
) -> NamedTuple(  # type: ignore[valid-type]
    "Monitored",
    [
        ("drift", bool),
        ("labels_count", int),
        ("retrain", bool),
        ("model_version", str),
    ],
):
    """Test ``source`` (a folder or archive of images, or an .npz of recorded windows)
    against the reference of the version ``alias`` (or ``version``) names. Outputs: the
    verdict, ``labels_count`` (labelled images in ``labels``, a feedback export), whether
    the pipeline should retrain (drift, or at least ``min_labels`` labels); drift.json as
    ``drift_report``, drift.html as ``report``, each test's p-value as metrics."""
    import shutil
    from pathlib import Path

    from image_finetune.steps.layout import DRIFT_HTML
    from image_finetune.steps.monitor import MonitorSettings, monitor

    folder = Path(drift_report.path)
    result = monitor(
        read_params(evaluate=evaluate, registry=registry),
        Path(source.path),
        folder,
        Path.cwd(),
        MonitorSettings(
            version=version or None,
            alias=alias,
            alpha=alpha,
            permutations=permutations,
            min_labels=min_labels,
            labels=Path(labels.path) if labels is not None else None,
        ),
    )
    shutil.copyfile(folder / DRIFT_HTML, report.path)
    metrics.log_metric("drift", float(result["drift"]))
    for name, test in result["tests"].items():
        metrics.log_metric(f"{name}_p_value", test["p_value"])
    drift_report.metadata.update(
        drift=result["drift"], model_version=result["model_version"], labels=result["labels"]
    )
    return (
        bool(result["drift"]),
        int(result["labels"]),
        bool(result["retrain"]["wanted"]),
        str(result["model_version"]),
    )
