"""One command per pipeline step; dvc.yaml calls these. Each parses its options, calls
exactly one step (image_finetune.steps) and reports; path defaults are the steps' declared
places in the project."""

from __future__ import annotations

import inspect
import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, get_origin

import typer
from pydantic import ValidationError

from image_finetune.config import TRACKING_ENV, Params, load_params
from image_finetune.console import reported
from image_finetune.errors import ConfigError
from image_finetune.serving.settings import (
    TOKEN_ENV,
    ServeSettings,
    operate_from_env,
    read_token,
)
from image_finetune.steps import spec as steps
from image_finetune.steps.spec import PARAMS_FILE, StepSpec

app = typer.Typer(
    add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True, help=__doc__
)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read")]
DEFAULT_PARAMS = Path(PARAMS_FILE)
ReasonOption = Annotated[str, typer.Option(help="why (kept in the promotion history)")]
CACHE_HELP = (
    "the training cache: features, checkpoints, finished attempts (default: "
    ".cache/image_finetune in the project's root, shared by its experiments; "
    "IMAGE_FINETUNE_CACHE moves it)"
)


def path_option(spec: StepSpec, option: str, help: str) -> typer.models.OptionInfo:
    """A path option named as the step declares it (its default is the step's declared path:
    ``spec.paths[option]``)."""
    return typer.Option(spec.path_option(option).flag, help=help)


def _load(path: Path) -> tuple[Params, Path]:
    """The params and the project root (the params file's folder)."""
    return load_params(path), path.resolve().parent


def _cache(option: Path, root: Path) -> Path:
    """The training cache's place (IMAGE_FINETUNE_CACHE, else against the project's root)."""
    from image_finetune.cache import cache_location

    return cache_location(option, root)


@app.command("locate-sources")
@reported
def locate_sources_command(
    params: ParamsOption = DEFAULT_PARAMS,
    out: Annotated[
        Path, path_option(steps.LOCATE_SOURCES, "out", "record of the chosen data and weights")
    ] = steps.LOCATE_SOURCES.paths["out"],
) -> None:
    """Choose the data and backbone weights (local copies, else public downloads) and record
    them by content hash: what DVC re-runs ingest and train for."""
    config, root = _load(params)
    from image_finetune.steps.locate_sources import locate_sources

    locate_sources(config, root, out)


@app.command("ingest")
@reported
def ingest_command(
    params: ParamsOption = DEFAULT_PARAMS,
    out: Annotated[
        Path, path_option(steps.INGEST, "out", "canonical dataset directory")
    ] = steps.INGEST.paths["out"],
) -> None:
    """Read the data source and write canonical train/validation/test arrays."""
    config, root = _load(params)
    from image_finetune.steps.ingest import ingest_data

    ingest_data(config, out, root)


@app.command("validate")
@reported
def validate_command(
    params: ParamsOption = DEFAULT_PARAMS,
    data: Annotated[
        Path, path_option(steps.VALIDATE, "data", "canonical dataset")
    ] = steps.VALIDATE.paths["data"],
    out: Annotated[
        Path, path_option(steps.VALIDATE, "out", "report directory")
    ] = steps.VALIDATE.paths["out"],
) -> None:
    """Run the data-validation suites; fail on any blocking expectation."""
    from image_finetune.steps.validate import validate_data

    validate_data(_load(params)[0], data, out)


@app.command("augment")
@reported
def augment_command(
    params: ParamsOption = DEFAULT_PARAMS,
    data: Annotated[
        Path, path_option(steps.AUGMENT, "data", "canonical dataset")
    ] = steps.AUGMENT.paths["data"],
    out: Annotated[
        Path, path_option(steps.AUGMENT, "out", "policy and preview")
    ] = steps.AUGMENT.paths["out"],
) -> None:
    """Write the augmentation policy and a preview grid of augmented real images."""
    from image_finetune.steps.augment import preview_augmentation

    preview_augmentation(_load(params)[0], data, out)


RUNG = steps.TRAIN_RUNG


@app.command("train-rung")
@reported
def train_rung_command(
    params: ParamsOption = DEFAULT_PARAMS,
    index: Annotated[int, typer.Option(min=0, help="the rung of train.ladder to train")] = 0,
    data: Annotated[Path, path_option(RUNG, "data", "canonical dataset")] = RUNG.paths["data"],
    out: Annotated[Path, path_option(RUNG, "out", "the attempt's folder")] = RUNG.paths["out"],
    cache: Annotated[Path, path_option(RUNG, "cache", CACHE_HELP)] = RUNG.paths["cache"],
    warm_start: Annotated[
        Path | None, typer.Option(help="the previous rung's model.keras to start from")
    ] = None,
) -> None:
    """Train one rung of the ladder (what each worker of a distributed job runs: with
    TF_CONFIG set, each trains its share and the chief writes the attempt)."""
    config, root = _load(params)
    from image_finetune.steps.train_rung import train_rung

    result = train_rung(config, index, data, out, _cache(cache, root), root, warm_start)
    typer.echo(
        f"rung {index} {result.rung!r}: best validation accuracy "
        f"{result.best_val_accuracy:.4f} on {result.distribution}"
    )


LADDER = steps.CLIMB_LADDER  # the `train` command (the stage users know) climbs the ladder


@app.command("train")
@reported
def climb_ladder_command(
    params: ParamsOption = DEFAULT_PARAMS,
    data: Annotated[Path, path_option(LADDER, "data", "canonical dataset")] = LADDER.paths["data"],
    validation: Annotated[
        Path, path_option(LADDER, "validation", "validate step's result")
    ] = LADDER.paths["validation"],
    out: Annotated[Path, path_option(LADDER, "out", "attempts and selected model")] = LADDER.paths[
        "out"
    ],
    cache: Annotated[Path, path_option(LADDER, "cache", CACHE_HELP)] = LADDER.paths["cache"],
    metrics: Annotated[
        Path, path_option(LADDER, "metrics", "the attempts' figures")
    ] = LADDER.paths["metrics"],
    live: Annotated[
        Path, path_option(LADDER, "live", "DVCLive's per-epoch figures")
    ] = LADDER.paths["live"],
) -> None:
    """Climb the ladder: train, evaluate on validation and gate each rung until one passes."""
    config, root = _load(params)
    from image_finetune.steps.climb_ladder import climb_ladder

    climb_ladder(config, data, validation, out, _cache(cache, root), root, metrics, live)


EXPORT_ENGINE = steps.EXPORT_ENGINE


@app.command("export-engine")
@reported
def export_engine_command(
    params: ParamsOption = DEFAULT_PARAMS,
    data: Annotated[
        Path, path_option(EXPORT_ENGINE, "data", "canonical dataset")
    ] = EXPORT_ENGINE.paths["data"],
    model: Annotated[
        Path, path_option(EXPORT_ENGINE, "model", "saved classifier")
    ] = EXPORT_ENGINE.paths["model"],
    out: Annotated[
        Path, path_option(EXPORT_ENGINE, "out", "engine folder to write")
    ] = EXPORT_ENGINE.paths["out"],
) -> None:
    """The classifier on the fast inference engine that serves (engine.engine): its fp32
    model checked against Keras on test, int8 judged beside fp32 on test; engine.json says
    what serves."""
    from image_finetune.steps.export_engine import export_engine

    manifest = export_engine(_load(params)[0], data, model, out)
    typer.echo(
        json.dumps(
            {
                key: manifest[key]
                for key in ("default_engine", "serving_precision", "agreement", "int8")
            },
            indent=2,
        )
    )


@app.command("evaluate")
@reported
def evaluate_command(
    params: ParamsOption = DEFAULT_PARAMS,
    data: Annotated[
        Path, path_option(steps.EVALUATE, "data", "canonical dataset")
    ] = steps.EVALUATE.paths["data"],
    model: Annotated[
        Path, path_option(steps.EVALUATE, "model", "saved classifier")
    ] = steps.EVALUATE.paths["model"],
    engine: Annotated[
        Path,
        path_option(
            steps.EVALUATE,
            "engine",
            "export-engine's folder: evaluate on the engine and precision that will serve",
        ),
    ] = steps.EVALUATE.paths["engine"],
    out: Annotated[
        Path, path_option(steps.EVALUATE, "out", "report directory")
    ] = steps.EVALUATE.paths["out"],
    metrics: Annotated[
        Path, path_option(steps.EVALUATE, "metrics", "flat metrics")
    ] = steps.EVALUATE.paths["metrics"],
    split: Annotated[str, typer.Option(help="train, validation or test")] = "test",
    keras: Annotated[
        bool, typer.Option(help="evaluate the Keras model itself, not the engine")
    ] = False,
) -> None:
    """Evaluate a model on one split: metrics, confusion matrix, gallery, HTML report."""
    from image_finetune.steps.evaluate import evaluate_classifier

    evaluate_classifier(
        _load(params)[0],
        data,
        model,
        out,
        split,
        metrics_file=metrics,
        engine=None if keras else engine,
    )


@app.command("profile")
@reported
def profile_command(
    params: ParamsOption = DEFAULT_PARAMS,
    data: Annotated[
        Path, path_option(steps.PROFILE, "data", "canonical dataset")
    ] = steps.PROFILE.paths["data"],
    model: Annotated[
        Path, path_option(steps.PROFILE, "model", "saved classifier")
    ] = steps.PROFILE.paths["model"],
    engine: Annotated[
        Path,
        path_option(
            steps.PROFILE,
            "engine",
            "export-engine's folder: summarise on the engine and precision that will serve",
        ),
    ] = steps.PROFILE.paths["engine"],
    out: Annotated[
        Path, path_option(steps.PROFILE, "out", "reference profile folder")
    ] = steps.PROFILE.paths["out"],
    keras: Annotated[
        bool, typer.Option(help="summarise on the Keras model itself, not the engine")
    ] = False,
) -> None:
    """The reference profile monitoring compares live traffic with: the classifier's
    summaries of the validation images."""
    from image_finetune.steps.profile import profile_classifier

    profile = profile_classifier(_load(params)[0], data, model, out, None if keras else engine)
    typer.echo(json.dumps(profile.summary(), indent=2))


@app.command("gate")
@reported
def gate_command(
    params: ParamsOption = DEFAULT_PARAMS,
    evaluation: Annotated[
        Path, path_option(steps.FINAL_GATE, "evaluation", "evaluate step's output")
    ] = steps.FINAL_GATE.paths["evaluation"],
    out: Annotated[
        Path, path_option(steps.FINAL_GATE, "out", "decision JSON")
    ] = steps.FINAL_GATE.paths["out"],
) -> None:
    """The final "meets requirements?" decision on the test evaluation (and the champion)."""
    from image_finetune.steps.final_gate import final_gate

    decision = final_gate(_load(params)[0], evaluation, out)
    typer.echo("\n".join(decision.reasons))


REGISTER = steps.REGISTER


@app.command("register")
@reported
def register_command(
    params: ParamsOption = DEFAULT_PARAMS,
    data: Annotated[Path, path_option(REGISTER, "data", "canonical dataset")] = REGISTER.paths[
        "data"
    ],
    validation: Annotated[
        Path, path_option(REGISTER, "validation", "validate's output")
    ] = REGISTER.paths["validation"],
    models: Annotated[
        Path, path_option(REGISTER, "models", "train step's output")
    ] = REGISTER.paths["models"],
    evaluation: Annotated[
        Path, path_option(REGISTER, "evaluation", "evaluate's output")
    ] = REGISTER.paths["evaluation"],
    decision: Annotated[
        Path, path_option(REGISTER, "decision", "final gate decision")
    ] = REGISTER.paths["decision"],
    profile: Annotated[
        Path, path_option(REGISTER, "profile", "reference profile")
    ] = REGISTER.paths["profile"],
    engine: Annotated[
        Path, path_option(REGISTER, "engine", "export-engine's folder")
    ] = REGISTER.paths["engine"],
    out: Annotated[Path, path_option(REGISTER, "out", "registration result")] = REGISTER.paths[
        "out"
    ],
) -> None:
    """Track the run in MLflow; register the model and promote it if it beats the champion."""
    config, root = _load(params)
    from image_finetune.steps.register import register_classifier

    outcome = register_classifier(
        config,
        data,
        evaluation,
        decision,
        out,
        root,
        models=models,
        validation=validation,
        profile=profile,
        engine=engine,
    )
    typer.echo(json.dumps(outcome, indent=2))


@app.command("promote")
@reported
def promote_command(
    version: Annotated[str, typer.Argument(help="model version to make champion")],
    reason: ReasonOption = "manual promotion",
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Make a registered version the champion (recorded in the promotion history)."""
    from image_finetune.steps.manage_registry import promote_version

    typer.echo(promote_version(_load(params)[0], version, reason))


@app.command("rollback")
@reported
def rollback_command(
    reason: ReasonOption = "manual rollback", params: ParamsOption = DEFAULT_PARAMS
) -> None:
    """Restore the champion that the current champion replaced."""
    from image_finetune.steps.manage_registry import rollback_champion

    entry = rollback_champion(_load(params)[0], reason)
    typer.echo(f"champion is now v{entry['version']} (was v{entry['previous']})")


@app.command("models")
@reported
def models_command(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """List registered versions with aliases and key metrics, then the promotion history."""
    from image_finetune.steps.manage_registry import list_models

    typer.echo("\n".join(list_models(_load(params)[0]).lines()))


def serve_option(setting: str, help: str | None, envvar: str = ""):
    """A serve setting's flag, also read from IMAGE_FINETUNE_<SETTING> (or ``envvar``)."""
    return typer.Option(
        f"--{setting.replace('_', '-')}",
        help=help,
        show_envvar=True,
        envvar=envvar or f"IMAGE_FINETUNE_{setting.upper()}",
    )


# ServeSettings' fields that are no flag: the token (flags show in ps), where it came from
# (--token-file below reads it), and the operating settings (environment only).
NOT_SERVE_FLAGS = ("token", "token_file", "operate")
SERVE_ENVVARS = {"tracking_uri": TRACKING_ENV}  # MLflow's own variable, not ours
TOKEN_FILE_HELP = (
    "file holding the bearer token clients must send (a mounted Secret); or set "
    "IMAGE_FINETUNE_TOKEN"
)
NO_AUTH_HELP = "serve a non-loopback address without a token (something in front authenticates)"
KEYWORD = inspect.Parameter.KEYWORD_ONLY


def flag_type(annotation) -> type:
    """The type a setting's flag parses: its own, or str for a choice (the setting checks
    it, so a wrong value reads as the other invalid settings do)."""
    return str if get_origin(annotation) is Literal else annotation


def serve_options() -> list[inspect.Parameter]:
    """One option per ServeSettings field (name, default and help from the field), then
    the options that are not settings."""
    settings = [
        inspect.Parameter(
            name,
            KEYWORD,
            default=field.default,
            annotation=Annotated[
                flag_type(field.annotation),
                serve_option(name, field.description, SERVE_ENVVARS.get(name, "")),
            ],
        )
        for name, field in ServeSettings.model_fields.items()
        if name not in NOT_SERVE_FLAGS
    ]
    return [
        *settings,
        inspect.Parameter(
            "host",
            KEYWORD,
            default="127.0.0.1",
            annotation=Annotated[str, serve_option("host", "address to bind")],
        ),
        inspect.Parameter(
            "port_", KEYWORD, default=8080, annotation=Annotated[int, serve_option("port", "port")]
        ),
        inspect.Parameter(
            "token_file",
            KEYWORD,
            default=None,
            annotation=Annotated[Path | None, serve_option("token_file", TOKEN_FILE_HELP)],
        ),
        inspect.Parameter(
            "no_auth",
            KEYWORD,
            default=False,
            annotation=Annotated[bool, serve_option("no_auth", NO_AUTH_HELP)],
        ),
        inspect.Parameter(
            "access_log",
            KEYWORD,
            default=False,
            annotation=Annotated[bool, serve_option("access_log", "log every request")],
        ),
    ]


def serve_command(
    *, host: str, port_: int, token_file: Path | None, no_auth: bool, access_log: bool, **flags
) -> None:
    """Serve models:/<name>@<alias> over HTTP: a simple API and the Open Inference Protocol
    (reloads when the alias moves). Needs no params.yaml. Monitoring, feedback and rollout:
    environment only (IMAGE_FINETUNE_MONITOR, _ROLLOUT, _FEEDBACK_URI, ...: OperateSettings)."""
    from image_finetune.steps.serve import serve_champion

    token = read_token(os.environ.get(TOKEN_ENV), token_file)
    try:  # each flag named as its setting is that setting; the operating ones from the env
        settings = ServeSettings(
            **{
                **flags,
                "token": token,
                "token_file": token_file if token else None,
                "operate": operate_from_env(os.environ),
            }
        )
    except ValidationError as exc:
        raise ConfigError(f"serve settings are invalid:\n{exc}") from exc
    serve_champion(settings, host, port_, no_auth=no_auth, access_log=access_log)


# The options come from ServeSettings: a new setting is a new flag without a second edit.
serve_command.__signature__ = inspect.Signature(serve_options())  # type: ignore[attr-defined]
serve_command.__annotations__ = {p.name: p.annotation for p in serve_options()}
app.command("serve")(reported(serve_command))


class FeedbackAction(StrEnum):
    export = "export"


class RolloutAction(StrEnum):
    status = "status"
    promote = "promote"
    abort = "abort"


FeedbackUriOption = Annotated[
    str | None,
    typer.Option(
        "--feedback-uri",
        envvar="IMAGE_FINETUNE_FEEDBACK_URI",
        show_envvar=True,
        help="the server's feedback store: sqlite:///<path> or a path",
    ),
]
ChallengerOption = Annotated[str, typer.Option(help="the challenger's alias")]


@app.command("feedback")
@reported
def feedback_command(
    action: Annotated[FeedbackAction, typer.Argument(help="export")],
    feedback_uri: FeedbackUriOption = None,
    out: Annotated[
        Path, path_option(steps.FEEDBACK, "out", "image-folder tree train/<class>/ to write")
    ] = steps.FEEDBACK.paths["out"],
) -> None:
    """Export the labelled feedback as an image-folder tree the ingest reads."""
    from image_finetune.steps.feedback import export_feedback

    typer.echo(json.dumps(export_feedback(feedback_uri, out), indent=2))


@app.command("rollout")
@reported
def rollout_command(
    action: Annotated[RolloutAction, typer.Argument(help="status, promote or abort")],
    feedback_uri: FeedbackUriOption = None,
    challenger: ChallengerOption = "challenger",
    min_pairs: Annotated[int, typer.Option(min=1, help="labelled pairs needed to decide")] = 100,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Decide on the challenger from live labelled pairs (the offline gate's McNemar rule):
    show the evidence, promote it, or abort the rollout (exit 6 when not promoted)."""
    from image_finetune.steps.rollout import rollout_abort, rollout_promote, rollout_status

    config = _load(params)[0]
    if action is RolloutAction.abort:
        typer.echo(f"v{rollout_abort(config, challenger)} is no longer {challenger}")
    elif action is RolloutAction.status:
        decision = rollout_status(config, feedback_uri, challenger, min_pairs)
        typer.echo(json.dumps(decision.to_json(), indent=2))
    else:
        result = rollout_promote(config, feedback_uri, challenger, min_pairs)
        typer.echo(json.dumps(result, indent=2))


BATCH = steps.PREDICT_BATCH


@app.command("predict-batch")
@reported
def predict_batch_command(
    source: Annotated[Path, typer.Argument(help="folder or .tar(.gz) of images")],
    out: Annotated[Path, path_option(BATCH, "out", "CSV of predictions")] = BATCH.paths["out"],
    model: Annotated[
        str, typer.Option(help="models:/name@alias, runs:/..., or a .keras (default: the champion)")
    ] = "",
    data_manifest: Annotated[
        Path, path_option(BATCH, "data_manifest", "class names for a bare .keras")
    ] = BATCH.paths["data_manifest"],
    engine: Annotated[
        str | None,
        typer.Option(
            envvar="IMAGE_FINETUNE_ENGINE",
            show_envvar=True,
            help="auto, tensorflow, onnxruntime or openvino, for a registered version with an "
            "engine folder (default: auto)",
        ),
    ] = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Batch inference over a folder or archive of images, to a CSV."""
    from image_finetune.steps.predict_batch import predict_batch

    count = predict_batch(_load(params)[0], source, out, model, data_manifest, engine=engine)
    typer.echo(f"{count} images -> {out}")


MONITOR = steps.MONITOR


@app.command("monitor")
@reported
def monitor_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="folder or .tar(.gz) of images, or an .npz of a server's recorded windows"
        ),
    ],
    out: Annotated[
        Path, path_option(MONITOR, "out", "folder for drift.json and drift.html")
    ] = MONITOR.paths["out"],
    model_name: Annotated[
        str, typer.Option(help="registered model (default: registry.model_name)")
    ] = "",
    alias: Annotated[str, typer.Option(help="the version this alias names")] = "champion",
    version: Annotated[str, typer.Option(help="a version number (instead of --alias)")] = "",
    alpha: Annotated[
        float, typer.Option(min=0.0001, max=0.5, help="false-alarm rate of the whole window test")
    ] = 0.05,
    permutations: Annotated[
        int, typer.Option(min=20, max=2000, help="MMD permutations (at least 8/alpha)")
    ] = 500,
    max_images: Annotated[int, typer.Option(min=20, help="images read at most")] = 20_000,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="image-folder tree of labelled feedback (image-finetune feedback export)"
        ),
    ] = None,
    min_labels: Annotated[
        int,
        typer.Option(
            min=1,
            help="new labelled images (since the "
            "last completed retrain) that start a retrain by "
            "themselves",
        ),
    ] = 200,
    retrain: Annotated[
        bool,
        typer.Option(
            help="on drift or enough labels, run dvc repro (with the labels as extra training data)"
        ),
    ] = False,
    feedback_uri: FeedbackUriOption = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Test images or recorded windows against a registered version's reference profile:
    drift.json and drift.html. Exit 0 whether or not drift is found."""
    from image_finetune.steps.monitor import MonitorSettings, monitor

    config, root = _load(params)
    if model_name:
        config = config.model_copy(
            update={"registry": config.registry.model_copy(update={"model_name": model_name})}
        )
    settings = MonitorSettings(
        version=version or None,
        alias=alias,
        alpha=alpha,
        permutations=permutations,
        max_images=max_images,
        labels=labels,
        min_labels=min_labels,
        retrain=retrain,
        feedback_uri=feedback_uri,
    )
    report = monitor(config, source, out, root, settings)
    typer.echo(
        json.dumps(
            {
                key: report[key]
                for key in (
                    "drift",
                    "model_name",
                    "model_version",
                    "window_size",
                    "labels",
                    "retrain",
                )
            },
            indent=2,
        )
    )


@app.command("export-savedmodel")
@reported
def export_command(
    model: Annotated[
        Path, path_option(steps.EXPORT, "model", "saved classifier")
    ] = steps.EXPORT.paths["model"],
    out: Annotated[
        Path, path_option(steps.EXPORT, "out", "SavedModel directory")
    ] = steps.EXPORT.paths["out"],
) -> None:
    """Export a TF Serving SavedModel whose serving signature takes uint8 images."""
    from image_finetune.steps.export import export_savedmodel

    typer.echo(export_savedmodel(model, out))


class CacheAction(StrEnum):
    """What ``image-finetune cache`` does."""

    ls = "ls"
    prune = "prune"


@app.command("cache")
@reported
def cache_command(
    action: Annotated[
        CacheAction,
        typer.Argument(help="ls: list the entries; prune: remove some (never one in use)"),
    ],
    older_than: Annotated[
        str | None, typer.Option(help="prune: entries unused for longer than this (30d, 12h, 90m)")
    ] = None,
    max_size: Annotated[
        str | None,
        typer.Option(help="prune: then the least recently used until the cache fits (10G, 500M)"),
    ] = None,
    cache: Annotated[
        Path, path_option(steps.MANAGE_CACHE, "cache", CACHE_HELP)
    ] = steps.MANAGE_CACHE.paths["cache"],
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """List the training cache (feature caches, checkpoints, finished attempts) with sizes
    and ages, or prune it by age and total size, least recently used first."""
    folder = _cache(cache, _load(params)[1])
    from image_finetune.steps.manage_cache import list_cache, prune_cache

    if action is CacheAction.ls:
        if older_than is not None or max_size is not None:
            raise ConfigError("cache ls: --older-than and --max-size are prune's options")
        typer.echo("\n".join(list_cache(folder)))
        return
    typer.echo("\n".join(prune_cache(folder, older_than, max_size).lines(folder)))


@app.command("check-params")
@reported
def check_params_command(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Validate params.yaml and print the effective configuration."""
    from image_finetune.steps.check_params import check_params

    typer.echo(check_params(_load(params)[0]))


if __name__ == "__main__":
    app()
