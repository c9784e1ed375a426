"""The monitoring pipeline: test what the served model sees, retrain only when that says so.

    import the images or recorded windows
    labelled feedback: exported from the server's store (``feedback_uri`` on the feedback
      volume ``feedback_pvc``), or imported from ``labels_uri`` (an export made elsewhere)
    -> monitor
      dsl.If(monitor.retrain): the fine-tuning pipeline (pipelines/pipeline.py), nested,
        its ingest adding the labelled feedback to train
        -> (exported from the store) mark the feedback used: the store's watermark moves

``retrain`` is the monitor step's verdict: drift was found, or at least ``min_labels`` new
labelled images arrived (new: received after the store's watermark, which moves only once a
retraining given them has run to its end; every image of an imported folder counts). The
nested run is the whole fine-tuning pipeline, unchanged: the
same ladder, the same gate on validation, the same final gate and McNemar test against the
champion on test. Its ``registry.promote`` defaults to false here, so a retrained model that
passes becomes ``challenger`` and nothing more: it goes out in shadow, then as a canary, and
only ``image-finetune rollout promote`` on live labelled pairs makes it champion. Drift
alone never promotes anything.

The pipeline's parameters: the fine-tuning pipeline's (with params.yaml's values as
defaults), and the monitor's: where the images are (``source_uri``: a folder, an archive or
an .npz of recorded windows, in the object store KFP reads), where the exported feedback is
(``labels_uri``, or the store's ``feedback_uri``: only when compiled with one), the alias or
version to test against, the
tests' level and permutations, and how many labels make a retraining worth it. The URIs
given at compile time are the defaults a scheduled or alert-started run uses. A recurring run of
it (``image_finetune.pipelines.cli schedule``) is the periodic check; an alert starts it too
(``image_finetune.pipelines.cli alert-receiver``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Artifact
from kfp.dsl.graph_component import GraphComponent

from image_finetune.components import export_labelled_feedback, mark_feedback_used, monitor_drift
from image_finetune.config import Params
from image_finetune.errors import ConfigError
from image_finetune.pipelines.deployment import Deployment
from image_finetune.pipelines.pipeline import (
    EXTRA_DATA,
    build_pipeline,
    parameter_descriptions,
    pipeline_arguments,
    with_parameters,
)

PIPELINE_NAME = "image-finetune-monitoring"
DISPLAY_NAME = "Image classifier monitoring and retraining"
DESCRIPTION = (
    "Test the served model's recent images against its reference profile; retrain "
    "with the fine-tuning pipeline only on drift or enough new labels. The "
    "retrained model passes the same gates and becomes the challenger; drift alone "
    "never promotes."
)
MONITOR_DEFAULTS: dict[str, Any] = {
    "source_uri": "",
    "alias": "champion",
    "version": "",
    "alpha": 0.05,
    "permutations": 500,
    "min_labels": 200,
}
FEEDBACK_MOUNT = "/var/lib/image-finetune"  # as the serving pod mounts the feedback volume
DEFAULT_FEEDBACK_URI = f"sqlite:///{FEEDBACK_MOUNT}/feedback.db"  # components/shadow, canary
MONITOR_DESCRIPTIONS = {
    "feedback_uri": "the server's feedback store on the feedback volume (sqlite:///<path>), "
    "exported for the monitor and the retraining",
    "source_uri": "the images to test: a folder or .tar.gz of images, or an .npz of the "
    "server's recorded windows (s3://, gs://, minio:// as KFP reads)",
    "labels_uri": "the exported feedback (image-finetune feedback export), counted as labels",
    "alias": "the registry alias of the version to test against",
    "version": "a version number instead of the alias ('' for the alias)",
    "alpha": "the drift tests' significance level (Bonferroni-corrected in the step)",
    "permutations": "permutations of the embedding's MMD test",
    "min_labels": "labelled images that make a retraining worth it without drift",
}


def retraining_params(params: Params) -> Params:
    """``params`` with promotion off: a retrained model becomes the challenger only."""
    registry = params.registry.model_copy(update={"promote": False})
    return params.model_copy(update={"registry": registry})


def monitoring_arguments(
    params: Params, source_uri: str = "", labels_uri: str = "", feedback_pvc: str = ""
) -> dict[str, Any]:
    """The monitoring pipeline's parameters and their defaults for ``params``: with a
    ``labels_uri`` parameter only where one is given, a ``feedback_uri`` one only where the
    feedback volume is."""
    if labels_uri and feedback_pvc:
        raise ConfigError(
            "labels come either from --labels-uri (an export made elsewhere) or "
            "from the server's store on --feedback-pvc, not both"
        )
    labels = (
        {"labels_uri": labels_uri}
        if labels_uri
        else {"feedback_uri": DEFAULT_FEEDBACK_URI}
        if feedback_pvc
        else {}
    )
    return {
        **pipeline_arguments(retraining_params(params)),
        **MONITOR_DEFAULTS,
        "source_uri": source_uri,
        **labels,
    }


def monitoring_descriptions(params: Params) -> dict[str, str]:
    """What each parameter of the monitoring pipeline is, for the run form."""
    return {**parameter_descriptions(params), **MONITOR_DESCRIPTIONS}


def _imported(uri, name: str):
    """An artifact at ``uri`` (a pipeline parameter), re-read on every run."""
    return dsl.importer(artifact_uri=uri, artifact_class=Artifact, reimport=True).set_display_name(
        f"import the {name}"
    )


def _on_feedback_volume(task, deployment: Deployment, claim: str, cpu: str):
    """A task that opens the server's SQLite store: on the feedback volume, never cached."""
    deployment.on_cpu(task, cpu, "1G", retries=2, cache=False)
    kubernetes.mount_pvc(task, pvc_name=claim, mount_path=FEEDBACK_MOUNT)
    return task


def _labels(arguments: dict, deployment: Deployment, feedback_pvc: str):
    """The labelled feedback: exported from the store, imported, or None."""
    if "labels_uri" in arguments:
        return _imported(arguments["labels_uri"], "exported feedback").output
    if feedback_pvc:
        return (
            _on_feedback_volume(
                export_labelled_feedback(feedback_uri=arguments["feedback_uri"]),
                deployment,
                feedback_pvc,
                "1",
            )
            .set_display_name("export the labelled feedback")
            .outputs["labels"]
        )
    return None


def build_monitoring_pipeline(
    params: Params,
    deployment: Deployment | None = None,
    git_commit: str = "unknown",
    source_uri: str = "",
    labels_uri: str = "",
    feedback_pvc: str = "",
) -> GraphComponent:
    """The monitoring pipeline for ``params``, the URIs as its parameters' defaults; with a
    ``labels_uri``, or the server's feedback volume ``feedback_pvc`` (whose store it
    exports), it counts the labelled feedback and the retraining trains on it too."""
    deployment = deployment or Deployment()
    defaults = {
        **monitoring_arguments(params, source_uri, labels_uri, feedback_pvc),
        "cache_dir": deployment.cache_dir,
    }
    with_labels = bool(labels_uri or feedback_pvc)
    training = build_pipeline(
        retraining_params(params), deployment, git_commit, extra_data=with_labels
    )
    training_names = [*pipeline_arguments(params), "cache_dir"]

    def image_finetune_monitoring(*values) -> None:
        arguments = dict(zip(defaults, values, strict=True))
        labels = _labels(arguments, deployment, feedback_pvc)
        given = {"labels": labels} if labels is not None else {}
        monitored = deployment.on_cpu(
            monitor_drift(
                evaluate=arguments["evaluate"],
                registry=arguments["registry"],
                source=_imported(arguments["source_uri"], "images").output,
                **{
                    name: arguments[name]
                    for name in ("alias", "version", "alpha", "permutations", "min_labels")
                },
                **given,
            ),
            "2",
            "8G",
            retries=2,
            cache=False,
        ).set_display_name("monitor")
        deployment.with_credentials(monitored)
        with dsl.If(monitored.outputs["retrain"] == True, name="drift-or-new-labels"):  # noqa: E712
            extra = {EXTRA_DATA: labels} if labels is not None else {}
            retrained = training(
                **{name: arguments[name] for name in training_names}, **extra
            ).set_display_name("retrain: the fine-tuning pipeline")
            if feedback_pvc:
                _on_feedback_volume(
                    mark_feedback_used(feedback_uri=arguments["feedback_uri"], labels=labels),
                    deployment,
                    feedback_pvc,
                    "100m",
                ).set_display_name("mark the feedback used").after(retrained)

    return dsl.pipeline(name=PIPELINE_NAME, display_name=DISPLAY_NAME, description=DESCRIPTION)(
        with_parameters(image_finetune_monitoring, defaults, monitoring_descriptions(params))
    )


def compile_monitoring_pipeline(
    params: Params,
    package_path: str,
    deployment: Deployment | None = None,
    git_commit: str = "unknown",
    source_uri: str = "",
    labels_uri: str = "",
    feedback_pvc: str = "",
) -> None:
    """Write the monitoring pipeline's YAML (what ``schedule`` and the alert receiver run)."""
    compiler.Compiler().compile(
        build_monitoring_pipeline(
            params, deployment, git_commit, source_uri, labels_uri, feedback_pvc
        ),
        package_path,
    )


def default_source(package: str) -> str:
    """The ``source_uri`` a compiled monitoring pipeline runs with when given none."""
    import yaml

    try:
        spec: Any = next(yaml.safe_load_all(Path(package).read_text()), None)  # None: TypeError
        default = spec["root"]["inputDefinitions"]["parameters"]["source_uri"]["defaultValue"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return ""  # not a compiled monitoring pipeline
    return default if isinstance(default, str) else ""
