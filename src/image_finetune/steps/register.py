"""The ``register`` stage: track the pipeline run in MLflow (a parent run; a nested run per
attempt where the loop's folder is given; the data checks; the test evaluation), register
the model that passed the final gate as ``challenger`` and promote it to ``champion`` when
the gate says it beats the champion. A DVC experiment's model stays a challenger (tagged with
the experiment's name and base commit) unless ``registry.promote_experiments`` is on."""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from image_finetune.config import Params
from image_finetune.data.canonical import load_split, manifest_digest, read_manifest
from image_finetune.engines import read_manifest as read_engine_manifest
from image_finetune.hashing import sha256_file
from image_finetune.inference import image_fit, require_classifier
from image_finetune.metrics import flatten_metrics
from image_finetune.model_card import CardFacts, card_description, card_html, card_markdown
from image_finetune.monitoring.profile import PROFILE_FOLDER, ReferenceProfile
from image_finetune.registry import lineage, tracking
from image_finetune.registry.client import client_for, registry_errors
from image_finetune.registry.promotion import promote
from image_finetune.registry.versions import CHALLENGER, CHAMPION, is_alias, register_version
from image_finetune.serving.pyfunc import log_image_classifier
from image_finetune.stats import per_image_correct
from image_finetune.steps.layout import (
    CARD_HTML,
    CARD_MARKDOWN,
    CONFUSION_PNG,
    DATA_MANIFEST,
    DECISION_FILE,
    DETAILS_FILE,
    ENGINE_FOLDER,
    EVALUATION,
    GALLERY_PNG,
    HISTORY_FILE,
    MODEL_FILE,
    RELIABILITY_PNG,
    RESULT_FILE,
    SELECTED,
    attempt_folder,
    read_decision,
    read_evaluation,
    read_summary,
)

log = logging.getLogger(__name__)


@registry_errors
def register_classifier(
    params: Params,
    data: Path,
    evaluation: Path,
    decision: Path,
    out: Path,
    root: Path,
    *,
    models: Path | None = None,
    model: Path | None = None,
    validation: Path | None = None,
    profile: Path | None = None,
    pipeline_run_id: str | None = None,
    lineage_extra: dict | None = None,
    engine: Path | None = None,
) -> dict:
    """Track the run and register its classifier; write the outcome to ``out``.

    ``models`` is the train stage's folder (``dvc repro``): its selected model is
    registered and each attempt becomes a nested run; or ``model`` is the classifier file
    alone (Kubeflow). ``validation`` adds the data checks. ``engine``, the export-engine
    step's folder, is logged as the version's ``engine/`` artifact and its choice (engine,
    serving precision, the int8 figures) tagged on the version. A retry with the same
    ``pipeline_run_id`` (by default: derived from the model, its evaluation and decision)
    reuses its run and its version; a failure ends the run FAILED."""
    if model is None:
        if models is None:
            raise ValueError("register_classifier needs models or model")
        model = models / SELECTED / MODEL_FILE
    run_id = pipeline_run_id or lineage.inputs_run_id(
        [model, evaluation / DETAILS_FILE, decision], params.digest()
    )
    client = client_for(params.registry)
    parent = tracking.parent_run(client, params, run_id)
    try:
        if models is not None:
            _log_attempts(client, parent, params, run_id, models)
        data_files = [data / DATA_MANIFEST] + ([validation / RESULT_FILE] if validation else [])
        tracking.log_files(client, parent, data_files, files_under="data")
        _log_evaluation(client, parent, evaluation, decision)
        tags = _lineage_tags(params, run_id, data, root, lineage_extra)
        if engine is not None:
            tags.update(_log_engine(client, parent, engine))
        for key, value in tags.items():
            client.set_tag(parent, key, value)
        tracking.log_dataset_inputs(client, parent, data_inputs(params, data))
        outcome = _register(client, parent, params, model, data, evaluation, decision, tags)
        if outcome["registered"] and profile is not None:
            _log_profile(client, parent, profile, outcome["version"])
        if outcome["registered"]:
            facts = card_facts(
                params, outcome["version"], data, evaluation, decision, models, tags, engine
            )
            publish_card(client, parent, facts, evaluation)
    except BaseException:  # SIGTERM and Ctrl-C too: the run must not stay RUNNING
        tracking.end_run_quietly(client, parent, "FAILED")
        raise
    client.set_terminated(parent, "FINISHED" if outcome["registered"] else "FAILED")
    outcome = {"pipeline_run_id": run_id, **outcome}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(outcome, indent=2) + "\n")
    return outcome


def _lineage_tags(params: Params, run_id: str, data: Path, root: Path, extra: dict | None):
    extra = {"git_commit": lineage.git_commit(root), **lineage.dvc_experiment(), **(extra or {})}
    if (root / "dvc.lock").exists():
        extra["dvc_lock_sha256"] = sha256_file(root / "dvc.lock")
    manifest = read_manifest(data)
    return lineage.lineage_tags(
        run_id,
        params.digest(),
        manifest_digest(data),
        manifest["class_names"],
        extra,
        image_fit(manifest),
    )


def _register(client, parent, params, model, data, evaluation, decision_file, tags) -> dict:
    decision = read_decision(decision_file)
    if not decision.passed:
        return {
            "registered": False,
            "promoted": False,
            "version": None,
            "reason": "the final gate failed: " + decision.failure_summary(),
        }
    name = params.registry.model_name
    example = np.asarray(load_split(data, "test").images[:4])
    version = register_version(
        client,
        params.registry.tracking_uri,
        name,
        parent,
        require_classifier(model),
        example,
        tags,
        log_image_classifier,
    )
    client.set_registered_model_alias(name, CHALLENGER, version)
    outcome = {
        "registered": True,
        "version": version,
        "model_uri": f"runs:/{parent}/model",
        "promoted": False,
        "reason": "promotion disabled (registry.promote: false)",
    }
    experiment = tags.get("dvc_experiment")
    if experiment and params.registry.promote and not params.registry.promote_experiments:
        outcome["reason"] = (
            f"DVC experiment {experiment}: registered as challenger, never "
            f"promoted (registry.promote_experiments: false)"
        )
    elif params.registry.promote and is_alias(client, name, CHAMPION, version):
        outcome.update(promoted=True, reason="champion (promoted by an earlier try of this run)")
    elif params.registry.promote and decision.promote:
        _, probabilities, labels = read_evaluation(evaluation)
        result = promote(
            params.registry,
            version,
            "; ".join(decision.reasons),
            per_image_correct(probabilities, labels),
            labels,
            params.gate.significance,
        )
        outcome.update(promoted=result["promoted"], reason=result["reason"])
    elif params.registry.promote:
        outcome["reason"] = "not promoted: " + decision.failure_summary()
    client.set_tag(parent, "registered_version", version)
    client.set_tag(parent, "promoted", str(outcome["promoted"]))
    log.info(
        "registered %s v%s (%s)",
        name,
        version,
        "promoted to champion" if outcome["promoted"] else outcome["reason"],
    )
    return outcome


def _log_profile(client, parent: str, profile: Path, version: str) -> None:
    """The reference profile, tagged with the version it belongs to, beside the model."""
    tagged = ReferenceProfile.load(profile).with_version(version)
    with tempfile.TemporaryDirectory() as work:
        tracking.log_files(client, parent, [], {PROFILE_FOLDER: tagged.save(Path(work))})
    client.set_tag(parent, "reference_profile", PROFILE_FOLDER)


def _log_engine(client, parent: str, engine: Path) -> dict[str, str]:
    """The engine folder as the run's ``engine/`` artifact (what download_engine fetches);
    the tags that say what it serves."""
    manifest = read_engine_manifest(engine)
    tracking.log_files(client, parent, [], {ENGINE_FOLDER: engine})
    tags = {"engine": manifest["default_engine"], "engine_precision": manifest["serving_precision"]}
    int8 = manifest.get("int8") or {}
    for key in ("accuracy", "fp32_accuracy", "loss_points", "mcnemar_p_value", "servable"):
        if key in int8:
            tags[f"int8_{key}"] = str(int8[key])
    return tags


def _log_evaluation(client, parent: str, evaluation: Path, decision: Path) -> None:
    metrics, _, _ = read_evaluation(evaluation)
    tracking.log_metric_values(client, parent, flatten_metrics(metrics, "test_"))
    tracking.log_files(client, parent, [decision], {EVALUATION: evaluation})
    client.set_tag(parent, "final_gate_passed", str(read_decision(decision).passed))


def _log_attempts(client, parent: str, params: Params, run_id: str, models: Path) -> None:
    """One nested run per attempt in the train stage's folder (rung params, epochs,
    validation metrics, decision, report)."""
    for record in read_summary(models):
        folder, rung = attempt_folder(models, record.index), params.train.ladder[record.index]
        if tracking.nested_run_exists(client, parent, "attempt_index", str(record.index)):
            continue  # logged by an earlier try of this pipeline run
        child = tracking.nested_run(
            client,
            parent,
            f"attempt-{record.index}-{rung.name}",
            {
                "kind": "attempt",
                "pipeline_run_id": run_id,
                "gate_passed": str(record.passed),
                "attempt_index": str(record.index),
            },
        )
        rung_params = {f"rung.{k}": str(v) for k, v in rung.model_dump(mode="json").items()}
        tracking.log_params(client, child, {**rung_params, "rung.index": str(record.index)})
        with (folder / HISTORY_FILE).open() as handle:
            tracking.log_epochs(client, child, list(csv.DictReader(handle)))
        metrics, _, _ = read_evaluation(folder / EVALUATION)
        tracking.log_metric_values(client, child, flatten_metrics(metrics, "val_"))
        files = [folder / DECISION_FILE, folder / RESULT_FILE, folder / HISTORY_FILE]
        tracking.log_files(client, child, files, {EVALUATION: folder / EVALUATION})
        client.set_terminated(child)


# The evaluation's pictures a card shows, by caption (those that exist).
CARD_PICTURES = {
    "Confusion matrix (test)": CONFUSION_PNG,
    "Reliability (calibration)": RELIABILITY_PNG,
    "Misclassified test images": GALLERY_PNG,
}
# The canonical splits as MLflow's dataset contexts.
DATASET_CONTEXTS = {"train": "training", "validation": "validation", "test": "test"}
# What a dataset input's profile shows of a split (not a sharded split's list of shards).
PROFILED = ("count", "per_class", "images_sha256", "labels_sha256")


def data_source_uri(params: Params, manifest: dict) -> str:
    """Where the data came from, as a URI: the source path (a file URI for a local one) or
    the TFDS dataset's name."""
    if manifest.get("source", {}).get("kind") == "tfds":
        return f"tfds:{params.data.tfds_name}"
    path = params.data.path
    return path if "://" in path else Path(path).resolve().as_uri()


def data_inputs(params: Params, data: Path) -> list[tracking.DatasetRef]:
    """The canonical dataset's splits as the run's MLflow dataset inputs: one name per
    dataset (its source and manifest digest), each split's image hash as its digest."""
    manifest, digest = read_manifest(data), manifest_digest(data)
    name = f"{manifest.get('source', {}).get('name') or params.data.tfds_name}@{digest[:12]}"
    source = data_source_uri(params, manifest)
    return [
        tracking.DatasetRef(
            name,
            split["images_sha256"],
            source,
            DATASET_CONTEXTS[key],
            {
                "manifest_sha256": digest,
                "split": key,
                **{k: v for k, v in split.items() if k in PROFILED},
            },
        )
        for key, split in manifest["splits"].items()
        if key in DATASET_CONTEXTS
    ]


def card_facts(
    params: Params,
    version: str,
    data: Path,
    evaluation: Path,
    decision: Path,
    models: Path | None,
    tags: dict,
    engine: Path | None = None,
) -> CardFacts:
    """What the pipeline's files say of the registered version, for its model card."""
    metrics, _, _ = read_evaluation(evaluation)
    attempts = [r.to_json() for r in read_summary(models)] if models is not None else []
    return CardFacts(
        model_name=params.registry.model_name,
        version=str(version),
        backbone=params.model.backbone,
        class_names=json.loads(tags["class_names"]),
        image_fit=tags.get("image_fit", "resize"),
        manifest=read_manifest(data),
        manifest_sha256=manifest_digest(data),
        test=metrics,
        decision=read_decision(decision).to_json(),
        attempts=attempts,
        engine=read_engine_manifest(engine) if engine is not None else None,
        lineage={
            key: tags[key]
            for key in ("pipeline_run_id", "git_commit", "params_sha256")
            if key in tags
        },
    )


def publish_card(client, parent: str, facts: CardFacts, evaluation: Path) -> None:
    """The card as the version's description and as Markdown and HTML in its run."""
    pictures = {
        caption: evaluation / name
        for caption, name in CARD_PICTURES.items()
        if (evaluation / name).exists()
    }
    with tempfile.TemporaryDirectory() as work:
        markdown, page = Path(work) / CARD_MARKDOWN, Path(work) / CARD_HTML
        markdown.write_text(
            card_markdown(
                facts, {caption: f"{EVALUATION}/{path.name}" for caption, path in pictures.items()}
            )
        )
        page.write_text(
            card_html(facts, {caption: path.read_bytes() for caption, path in pictures.items()})
        )
        tracking.log_files(client, parent, [markdown, page])
    client.update_model_version(
        facts.model_name, facts.version, description=card_description(facts)
    )
