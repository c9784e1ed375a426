"""The monitoring pipeline: test what the served model sees, retrain only when that says so.

    import the images or recorded windows (and the exported feedback) -> monitor
      dsl.If(monitor.retrain): the fine-tuning pipeline (pipelines/pipeline.py), nested

``retrain`` is the monitor step's verdict: drift was found, or at least ``min_labels`` new
labelled images arrived. The nested run is the whole fine-tuning pipeline, unchanged: the
same ladder, the same gate on validation, the same final gate and McNemar test against the
champion on test. Its ``registry.promote`` defaults to false here, so a retrained model that
passes becomes ``challenger`` and nothing more: it goes out in shadow, then as a canary, and
only ``image-finetune rollout promote`` on live labelled pairs makes it champion. Drift
alone never promotes anything.

The pipeline's parameters: the fine-tuning pipeline's (with params.yaml's values as
defaults), and the monitor's: where the images are (``source_uri``: a folder, an archive or
an .npz of recorded windows, in the object store KFP reads), where the exported feedback is
(``labels_uri``: only when compiled with one), the alias or version to test against, the
tests' level and permutations, and how many labels make a retraining worth it. The URIs
given at compile time are the defaults a scheduled or alert-started run uses. A recurring run of
it (``image_finetune.pipelines.cli schedule``) is the periodic check; an alert starts it too
(``image_finetune.pipelines.cli alert-receiver``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kfp import compiler, dsl
from kfp.dsl import Artifact
from kfp.dsl.graph_component import GraphComponent

from image_finetune.components import monitor_drift
from image_finetune.config import Params
from image_finetune.pipelines.deployment import Deployment
from image_finetune.pipelines.pipeline import (
    build_pipeline,
    parameter_descriptions,
    pipeline_arguments,
    with_parameters,
)

PIPELINE_NAME = "image-finetune-monitoring"
DISPLAY_NAME = "Image classifier monitoring and retraining"
DESCRIPTION = ("Test the served model's recent images against its reference profile; retrain "
               "with the fine-tuning pipeline only on drift or enough new labels. The "
               "retrained model passes the same gates and becomes the challenger; drift alone "
               "never promotes.")
MONITOR_DEFAULTS: dict[str, Any] = {
    "source_uri": "", "alias": "champion", "version": "", "alpha": 0.05,
    "permutations": 500, "min_labels": 200}
MONITOR_DESCRIPTIONS = {
    "source_uri": "the images to test: a folder or .tar.gz of images, or an .npz of the "
                  "server's recorded windows (s3://, gs://, minio:// as KFP reads)",
    "labels_uri": "the exported feedback (image-finetune feedback export), counted as labels",
    "alias": "the registry alias of the version to test against",
    "version": "a version number instead of the alias ('' for the alias)",
    "alpha": "the drift tests' significance level (Bonferroni-corrected in the step)",
    "permutations": "permutations of the embedding's MMD test",
    "min_labels": "labelled images that make a retraining worth it without drift"}


def retraining_params(params: Params) -> Params:
    """``params`` with promotion off: a retrained model becomes the challenger only."""
    registry = params.registry.model_copy(update={"promote": False})
    return params.model_copy(update={"registry": registry})


def monitoring_arguments(params: Params, source_uri: str = "",
                         labels_uri: str = "") -> dict[str, Any]:
    """The monitoring pipeline's parameters and their defaults for ``params``: with a
    ``labels_uri`` parameter only where one is given."""
    labels = {"labels_uri": labels_uri} if labels_uri else {}
    return {**pipeline_arguments(retraining_params(params)), **MONITOR_DEFAULTS,
            "source_uri": source_uri, **labels}


def monitoring_descriptions(params: Params) -> dict[str, str]:
    """What each parameter of the monitoring pipeline is, for the run form."""
    return {**parameter_descriptions(params), **MONITOR_DESCRIPTIONS}


def _imported(uri, name: str):
    """An artifact at ``uri`` (a pipeline parameter), re-read on every run."""
    return dsl.importer(artifact_uri=uri, artifact_class=Artifact, reimport=True).set_display_name(
        f"import the {name}")


def build_monitoring_pipeline(
    params: Params, deployment: Deployment | None = None, git_commit: str = "unknown",
    source_uri: str = "", labels_uri: str = "",
) -> GraphComponent:
    """The monitoring pipeline for ``params``, the URIs as its parameters' defaults; with a
    ``labels_uri`` it counts the exported feedback there too."""
    deployment = deployment or Deployment()
    training = build_pipeline(retraining_params(params), deployment, git_commit)
    training_names = [*pipeline_arguments(params), "cache_dir"]
    defaults = {**monitoring_arguments(params, source_uri, labels_uri),
                "cache_dir": deployment.cache_dir}
    with_labels = "labels_uri" in defaults

    def image_finetune_monitoring(*values) -> None:
        arguments = dict(zip(defaults, values, strict=True))
        labels = ({"labels": _imported(arguments["labels_uri"], "exported feedback").output}
                  if with_labels else {})
        monitored = deployment.on_cpu(monitor_drift(
            evaluate=arguments["evaluate"], registry=arguments["registry"],
            source=_imported(arguments["source_uri"], "images").output,
            **{name: arguments[name] for name in
               ("alias", "version", "alpha", "permutations", "min_labels")}, **labels,
        ), "2", "8G", retries=2, cache=False).set_display_name("monitor")
        deployment.with_credentials(monitored)
        with dsl.If(monitored.outputs["retrain"] == True, name="drift-or-new-labels"):  # noqa: E712
            training(**{name: arguments[name] for name in training_names}).set_display_name(
                "retrain: the fine-tuning pipeline")

    return dsl.pipeline(name=PIPELINE_NAME, display_name=DISPLAY_NAME, description=DESCRIPTION)(
        with_parameters(image_finetune_monitoring, defaults, monitoring_descriptions(params)))


def compile_monitoring_pipeline(
    params: Params, package_path: str, deployment: Deployment | None = None,
    git_commit: str = "unknown", source_uri: str = "", labels_uri: str = "",
) -> None:
    """Write the monitoring pipeline's YAML (what ``schedule`` and the alert receiver run)."""
    compiler.Compiler().compile(build_monitoring_pipeline(
        params, deployment, git_commit, source_uri, labels_uri), package_path)


def default_source(package: str) -> str:
    """The ``source_uri`` a compiled monitoring pipeline runs with when given none."""
    import yaml

    try:
        spec = next(yaml.safe_load_all(Path(package).read_text()), None)
        default = spec["root"]["inputDefinitions"]["parameters"]["source_uri"]["defaultValue"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return ""  # not a compiled monitoring pipeline
    return default if isinstance(default, str) else ""
