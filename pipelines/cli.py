"""Compile, run locally, or submit the Kubeflow pipeline (``image-finetune-pipeline``, or
``python -m image_finetune.pipelines.cli``).

    image-finetune-pipeline compile                 # writes .kfp/pipeline.yaml
    image-finetune-pipeline run-local               # kfp.local, in this environment
    image-finetune-pipeline run-local --runner docker   # each task in the project's image
    image-finetune-pipeline submit --host URL       # to a Kubeflow Pipelines cluster
    image-finetune-pipeline upload --host URL --version v2   # a pipeline (version) in the UI
    image-finetune-pipeline compile-monitoring      # writes .kfp/monitoring.yaml
    image-finetune-pipeline schedule --host URL --cron '0 0 3 * * *'   # recurring monitoring
    image-finetune-pipeline alert-receiver --host URL --pipeline-package .kfp/monitoring.yaml

Each reads params.yaml (``--params``) for the pipeline's defaults and the number of rungs
to unroll; ``--set section.key=value`` overrides one value (the value is read as YAML).
"""

import os
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml
from pydantic import ValidationError

from image_finetune.config import Params, load_params
from image_finetune.console import exit_without_extra, reported
from image_finetune.errors import RUN_FAILED, ConfigError

try:  # kfp: the `pipeline` extra; without it, the extra to install instead of a traceback
    from image_finetune.components.runtime import DEFAULT_IMAGE, IMAGE_ENV
    from image_finetune.pipelines.deployment import (
        CACHE_MOUNT,
        CACHE_PVC,
        CREDENTIALS_SECRET,
        GPU_TOLERATION,
        LAUNCHERS,
        Deployment,
        Toleration,
        parse_node_selector,
    )
except ModuleNotFoundError as missing:
    exit_without_extra(missing)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compile, run locally (kfp.local) or submit the Kubeflow pipeline.",
)

TOKEN_ENV = "KFP_TOKEN"

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read")]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="override a value: section.key=value (YAML); repeatable; list items by "
        "index, e.g. train.ladder.0.epochs=2",
    ),
]
ImageOption = Annotated[
    str,
    typer.Option(
        envvar=IMAGE_ENV, help="image setting: steps run on IMAGE-cpu, training on IMAGE-gpu"
    ),
]
GpusOption = Annotated[int, typer.Option(min=0, help="GPUs per training task (0: train on CPU)")]
WorkersOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="workers per rung: more than 1 trains each rung as a distributed job "
        "(--launcher; N workers x --gpus each; needs the cache PVC)",
    ),
]
LauncherOption = Annotated[
    str,
    typer.Option(
        help="the job of a rung with --workers > 1: tfjob (Kubeflow training operator v1) or "
        "trainjob (Kubeflow Trainer v2, run by --runtime)"
    ),
]
RuntimeOption = Annotated[
    str, typer.Option(help="the ClusterTrainingRuntime a TrainJob references (infra/k8s/trainer/)")
]
TolerationOption = Annotated[
    list[str] | None,
    typer.Option(
        "--toleration",
        help=f"a taint the GPU tasks tolerate, KEY[=VALUE]:EFFECT; repeatable "
        f"(default {GPU_TOLERATION}; 'none' for none)",
    ),
]
NodeSelectorOption = Annotated[
    list[str] | None,
    typer.Option(
        "--node-selector",
        help="a node label the GPU tasks require, KEY=VALUE; repeatable "
        "(e.g. cloud.google.com/gke-accelerator=nvidia-l4)",
    ),
]
TrainTimeoutOption = Annotated[
    int,
    typer.Option(min=0, help="seconds a training task (or a distributed job) may run; 0: no limit"),
]
StepTimeoutOption = Annotated[
    int, typer.Option(min=0, help="seconds any other task may run; 0: no limit")
]
TrainRetriesOption = Annotated[
    int,
    typer.Option(
        min=0,
        max=10,
        help="retries of a failed training task; with the cache PVC a retry "
        "resumes from the last checkpoint",
    ),
]
SecretOption = Annotated[
    str,
    typer.Option(
        help="Kubernetes Secret whose MLflow/S3 credentials the final gate and registration get "
        "as environment variables (keys: the variables' names); '' for none"
    ),
]
PvcOption = Annotated[
    str,
    typer.Option(
        help=f"PersistentVolumeClaim mounted at {CACHE_MOUNT} on the training tasks, where "
        "cache_dir then points by default; '' for none (a scratch folder per task)"
    ),
]


def apply_override(tree: dict, assignment: str) -> None:
    """Set ``section.key=value`` (the value parsed as YAML) in a params mapping."""
    path, sep, value = assignment.partition("=")
    if not sep or not path:
        raise typer.BadParameter(f"{assignment!r}: expected section.key=value", param_hint="--set")
    *parents, leaf = path.split(".")
    node = tree
    try:
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[int(leaf) if isinstance(node, list) else leaf] = yaml.safe_load(value)
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise typer.BadParameter(
            f"{assignment!r}: no such key ({exc})", param_hint="--set"
        ) from exc


def read_params(path: Path, overrides: list[str] | None, use_env: bool) -> Params:
    """params.yaml with the overrides applied, validated by the typed config."""
    tree = load_params(path, use_env=use_env).model_dump(mode="json", by_alias=True)
    for assignment in overrides or []:
        apply_override(tree, assignment)
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from exc


def _deployment(
    image: str, gpus: int, credentials_secret: str, cache_pvc: str, workers: int, **placement
) -> Deployment:
    return Deployment(
        image=image,
        gpus=gpus,
        credentials_secret=credentials_secret or None,
        cache_pvc=cache_pvc or None,
        workers=workers,
        **placement,
    )


def placement(
    launcher: str,
    runtime: str,
    tolerations: list[str] | None,
    node_selector: list[str] | None,
    train_timeout: int,
    step_timeout: int,
    train_retries: int,
) -> dict:
    """The Deployment's placement fields from the command's options."""
    if launcher not in LAUNCHERS:
        raise typer.BadParameter(
            f"{launcher!r}: expected one of {', '.join(LAUNCHERS)}", param_hint="--launcher"
        )
    chosen = (
        [GPU_TOLERATION]
        if tolerations is None
        else [text for text in tolerations if text != "none"]
    )
    return {
        "launcher": launcher,
        "runtime": runtime,
        "tolerations": tuple(Toleration.parse(text) for text in chosen),
        "node_selector": parse_node_selector(node_selector or []),
        "train_timeout": train_timeout,
        "step_timeout": step_timeout,
        "train_retries": train_retries,
    }


def _git_commit(params: Path) -> str:
    from image_finetune.registry.lineage import git_commit

    return git_commit(params.resolve().parent)


@app.command()
@reported
def compile(
    params: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    out: Annotated[Path, typer.Option(help="pipeline YAML to write")] = Path(".kfp/pipeline.yaml"),
    image: ImageOption = DEFAULT_IMAGE,
    gpus: GpusOption = 1,
    workers: WorkersOption = 1,
    credentials_secret: SecretOption = CREDENTIALS_SECRET,
    cache_pvc: PvcOption = CACHE_PVC,
    launcher: LauncherOption = "tfjob",
    runtime: RuntimeOption = Deployment.runtime,
    tolerations: TolerationOption = None,
    node_selector: NodeSelectorOption = None,
    train_timeout: TrainTimeoutOption = Deployment.train_timeout,
    step_timeout: StepTimeoutOption = Deployment.step_timeout,
    train_retries: TrainRetriesOption = Deployment.train_retries,
) -> None:
    """Write the pipeline YAML (upload it with `upload` or in the KFP UI, or submit it)."""
    from image_finetune.pipelines.pipeline import compile_pipeline

    start = time.perf_counter()
    config = read_params(params, overrides, use_env=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    deployment = _deployment(
        image,
        gpus,
        credentials_secret,
        cache_pvc,
        workers,
        **placement(
            launcher,
            runtime,
            tolerations,
            node_selector,
            train_timeout,
            step_timeout,
            train_retries,
        ),
    )
    compile_pipeline(config, str(out), deployment, _git_commit(params))
    kind = "TFJob" if launcher == "tfjob" else f"TrainJob ({runtime})"
    jobs = f", each rung a {kind} of {workers} workers x {gpus} GPUs" if workers > 1 else ""
    typer.echo(
        f"wrote {out}: {len(config.train.ladder)} attempts{jobs}, images {image}-cpu/-gpu, "
        f"secret {credentials_secret or '-'}, cache PVC {cache_pvc or '-'} "
        f"({time.perf_counter() - start:.1f} s)"
    )


@app.command("run-local")
@reported
def run_local(
    params: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    pipeline_root: Annotated[Path, typer.Option(help="where the tasks' outputs go")] = Path(
        ".kfp/local"
    ),
    cache_dir: Annotated[
        Path, typer.Option(help="training feature cache and finished attempts")
    ] = Path(".cache/image_finetune"),
    cache: Annotated[bool, typer.Option(help="kfp.local's task cache")] = False,
    runner: Annotated[
        str,
        typer.Option(
            help="subprocess: tasks in this environment; docker: each task in the CPU image "
            "(infra/docker/build.sh), data and weights mounted read-only"
        ),
    ] = "subprocess",
    image: ImageOption = DEFAULT_IMAGE,
) -> None:
    """Run the pipeline here with kfp.local (no cluster): tasks in subprocesses or containers."""
    from image_finetune.pipelines.local import RUNNERS
    from image_finetune.pipelines.local import run_local as run

    if runner not in RUNNERS:
        raise typer.BadParameter(
            f"{runner!r}: expected one of {', '.join(RUNNERS)}", param_hint="--runner"
        )
    config = read_params(params, overrides, use_env=True)
    outcome = run(
        config, params.resolve().parent, pipeline_root, cache_dir, cache, runner=runner, image=image
    )
    verdict = "succeeded" if outcome.succeeded else f"FAILED: {outcome.error}"
    where = f", {len(outcome.containers)} containers" if runner == "docker" else ""
    typer.echo(
        f"kfp.local run ({runner}{where}) {verdict} in {outcome.seconds:.0f} s; "
        f"outputs in {outcome.pipeline_root}"
    )
    if not outcome.succeeded:
        raise typer.Exit(RUN_FAILED)


@app.command()
@reported
def submit(
    host: Annotated[str, typer.Option(envvar="KFP_HOST", help="KFP API endpoint")],
    namespace: Annotated[
        str, typer.Option(envvar="KFP_NAMESPACE", help="Kubeflow profile namespace")
    ] = "kubeflow",
    experiment: Annotated[str, typer.Option(help="KFP experiment")] = "image-finetune",
    run_name: Annotated[str | None, typer.Option(help="default: pipeline name and time")] = None,
    params: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    image: ImageOption = DEFAULT_IMAGE,
    gpus: GpusOption = 1,
    workers: WorkersOption = 1,
    credentials_secret: SecretOption = CREDENTIALS_SECRET,
    cache_pvc: PvcOption = CACHE_PVC,
    cache_dir: Annotated[
        str | None,
        typer.Option(
            help=f"training cache inside the pods (default: {CACHE_MOUNT} with a cache PVC, else "
            "a scratch folder per task); a mounted volume makes retries resume"
        ),
    ] = None,
    service_account: Annotated[
        str | None, typer.Option(help="Kubernetes service account of the run's pods")
    ] = None,
    cache: Annotated[bool, typer.Option(help="KFP's task cache")] = True,
    launcher: LauncherOption = "tfjob",
    runtime: RuntimeOption = Deployment.runtime,
    tolerations: TolerationOption = None,
    node_selector: NodeSelectorOption = None,
    train_timeout: TrainTimeoutOption = Deployment.train_timeout,
    step_timeout: StepTimeoutOption = Deployment.step_timeout,
    train_retries: TrainRetriesOption = Deployment.train_retries,
) -> None:
    """Submit a run to a Kubeflow Pipelines cluster (bearer token, if needed: $KFP_TOKEN)."""
    import kfp

    from image_finetune.pipelines.pipeline import build_pipeline, pipeline_arguments

    config = read_params(params, overrides, use_env=False)
    deployment = _deployment(
        image,
        gpus,
        credentials_secret,
        cache_pvc,
        workers,
        **placement(
            launcher,
            runtime,
            tolerations,
            node_selector,
            train_timeout,
            step_timeout,
            train_retries,
        ),
    )
    where = {"cache_dir": cache_dir} if cache_dir is not None else {}
    client = kfp.Client(
        host=host, namespace=namespace, existing_token=os.environ.get(TOKEN_ENV) or None
    )
    result = client.create_run_from_pipeline_func(
        build_pipeline(config, deployment, _git_commit(params)),
        arguments={**pipeline_arguments(config), **where},
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
        enable_caching=cache,
        service_account=service_account,
    )
    typer.echo(f"submitted run {result.run_id} to {host} (experiment {experiment!r})")


@app.command()
@reported
def upload(
    host: Annotated[str, typer.Option(envvar="KFP_HOST", help="KFP API endpoint")],
    name: Annotated[str, typer.Option(help="the pipeline's name in KFP")] = "image-finetune",
    version: Annotated[
        str | None,
        typer.Option(help="the new version's name (default: the git commit and the time)"),
    ] = None,
    description: Annotated[
        str | None, typer.Option(help="the pipeline's (first upload) or the version's description")
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            envvar="KFP_NAMESPACE",
            help="profile namespace of a namespaced pipeline (default: a shared one)",
        ),
    ] = None,
    package: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="a compiled pipeline YAML to upload (default: "
            "compile it here from the options below)",
        ),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    image: ImageOption = DEFAULT_IMAGE,
    gpus: GpusOption = 1,
    workers: WorkersOption = 1,
    credentials_secret: SecretOption = CREDENTIALS_SECRET,
    cache_pvc: PvcOption = CACHE_PVC,
    launcher: LauncherOption = "tfjob",
    runtime: RuntimeOption = Deployment.runtime,
    tolerations: TolerationOption = None,
    node_selector: NodeSelectorOption = None,
    train_timeout: TrainTimeoutOption = Deployment.train_timeout,
    step_timeout: StepTimeoutOption = Deployment.step_timeout,
    train_retries: TrainRetriesOption = Deployment.train_retries,
) -> None:
    """Upload the pipeline to Kubeflow Pipelines: the pipeline with its first version, or a
    new version of it where one of that name exists (bearer token, if needed: $KFP_TOKEN)."""
    import tempfile

    from image_finetune.pipelines.pipeline import compile_pipeline
    from image_finetune.pipelines.runs import connect, default_version, kfp_errors, upload_package

    commit = _git_commit(params)
    with tempfile.TemporaryDirectory() as folder:
        if package is None:
            package = Path(folder) / "pipeline.yaml"
            deployment = _deployment(
                image,
                gpus,
                credentials_secret,
                cache_pvc,
                workers,
                **placement(
                    launcher,
                    runtime,
                    tolerations,
                    node_selector,
                    train_timeout,
                    step_timeout,
                    train_retries,
                ),
            )
            compile_pipeline(
                read_params(params, overrides, use_env=False), str(package), deployment, commit
            )
        with kfp_errors(host):
            uploaded = upload_package(
                connect(host, namespace or "kubeflow"),
                package,
                name,
                version or default_version(commit),
                description,
                namespace,
            )
    typer.echo(f"{uploaded.describe()} on {host}")


SourceUriOption = Annotated[
    str,
    typer.Option(
        help="the images each run tests: a folder, .tar.gz or recorded windows (.npz) in the "
        "object store KFP reads"
    ),
]
LabelsUriOption = Annotated[
    str,
    typer.Option(
        help="the exported feedback (image-finetune feedback export) to count; '' for none"
    ),
]
FeedbackPvcOption = Annotated[
    str,
    typer.Option(
        help="the server's feedback volume (infra/k8s/components/feedback: "
        "image-finetune-feedback): each run exports the labelled feedback from its store, "
        "counts the new labels and retrains on them; '' for none (or --labels-uri)"
    ),
]


@app.command("compile-monitoring")
@reported
def compile_monitoring(
    params: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    out: Annotated[Path, typer.Option(help="pipeline YAML to write")] = Path(
        ".kfp/monitoring.yaml"
    ),
    source_uri: SourceUriOption = "",
    labels_uri: LabelsUriOption = "",
    feedback_pvc: FeedbackPvcOption = "",
    image: ImageOption = DEFAULT_IMAGE,
    gpus: GpusOption = 1,
    workers: WorkersOption = 1,
    credentials_secret: SecretOption = CREDENTIALS_SECRET,
    cache_pvc: PvcOption = CACHE_PVC,
) -> None:
    """Write the monitoring pipeline's YAML: monitor, then the fine-tuning pipeline only on
    drift or enough new labels (for the alert receiver's ConfigMap, or the KFP UI)."""
    from image_finetune.pipelines.monitoring import compile_monitoring_pipeline

    config = read_params(params, overrides, use_env=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    deployment = _deployment(image, gpus, credentials_secret, cache_pvc, workers)
    compile_monitoring_pipeline(
        config, str(out), deployment, _git_commit(params), source_uri, labels_uri, feedback_pvc
    )
    typer.echo(
        f"wrote {out}: monitor -> retrain on drift or new labels "
        f"({len(config.train.ladder)} attempts), images {image}-cpu/-gpu"
    )


@app.command()
@reported
def schedule(
    host: Annotated[str, typer.Option(envvar="KFP_HOST", help="KFP API endpoint")],
    source_uri: SourceUriOption,
    cron: Annotated[
        str | None,
        typer.Option(help="KFP cron, six fields, seconds first: '0 0 3 * * *' is daily at 03:00"),
    ] = None,
    every: Annotated[int | None, typer.Option(help="or: seconds between runs")] = None,
    labels_uri: LabelsUriOption = "",
    feedback_pvc: FeedbackPvcOption = "",
    min_labels: Annotated[
        int, typer.Option(min=1, help="new labels that make a retraining worth it without drift")
    ] = 200,
    namespace: Annotated[
        str, typer.Option(envvar="KFP_NAMESPACE", help="Kubeflow profile namespace")
    ] = "kubeflow",
    experiment: Annotated[str, typer.Option(help="KFP experiment")] = "image-finetune-monitoring",
    name: Annotated[str, typer.Option(help="the recurring run's name")] = (
        "image-finetune-monitoring"
    ),
    params: ParamsOption = Path("params.yaml"),
    overrides: SetOption = None,
    image: ImageOption = DEFAULT_IMAGE,
    gpus: GpusOption = 1,
    credentials_secret: SecretOption = CREDENTIALS_SECRET,
    cache_pvc: PvcOption = CACHE_PVC,
    service_account: Annotated[
        str | None, typer.Option(help="Kubernetes service account of the runs' pods")
    ] = None,
) -> None:
    """Create a recurring run of the monitoring pipeline: one run at a time, no catch-up
    (bearer token, if needed: $KFP_TOKEN)."""
    import tempfile

    from image_finetune.pipelines.monitoring import (
        compile_monitoring_pipeline,
        monitoring_arguments,
    )
    from image_finetune.pipelines.runs import Schedule, connect, kfp_errors, schedule_package

    when = Schedule(cron=cron, interval_seconds=every)
    if not source_uri.strip():
        raise ConfigError("--source-uri: name the images each run tests")
    config = read_params(params, overrides, use_env=False)
    deployment = _deployment(image, gpus, credentials_secret, cache_pvc, 1)
    arguments = {
        **monitoring_arguments(config, source_uri, labels_uri, feedback_pvc),
        "min_labels": min_labels,
    }
    with tempfile.TemporaryDirectory() as folder:
        package = Path(folder) / "monitoring.yaml"
        compile_monitoring_pipeline(
            config,
            str(package),
            deployment,
            _git_commit(params),
            source_uri,
            labels_uri,
            feedback_pvc,
        )
        with kfp_errors(host):
            made = schedule_package(
                connect(host, namespace),
                package,
                experiment,
                namespace,
                name,
                when,
                arguments,
                service_account,
            )
    typer.echo(
        f"recurring run {made} ({name!r}, {when.describe()}, one at a time, no "
        f"catch-up) in experiment {experiment!r} on {host}"
    )


@app.command("alert-receiver")
@reported
def alert_receiver(
    host: Annotated[str, typer.Option(envvar="KFP_HOST", help="KFP API endpoint")],
    pipeline_package: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="the compiled monitoring pipeline to start (compile-monitoring)",
        ),
    ],
    token_file: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="the bearer token Alertmanager sends (a mounted Secret)",
        ),
    ],
    namespace: Annotated[
        str, typer.Option(envvar="KFP_NAMESPACE", help="Kubeflow profile namespace")
    ] = "kubeflow",
    experiment: Annotated[str, typer.Option(help="KFP experiment")] = "image-finetune-monitoring",
    listen: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8080,
    min_interval: Annotated[
        int, typer.Option(min=0, help="seconds between two runs, whatever fires")
    ] = 3600,
    state_file: Annotated[
        Path | None,
        typer.Option(
            dir_okay=False,
            help="SQLite file remembering the alerts a run was started for, "
            "across restarts (on a volume); none: in memory only",
        ),
    ] = None,
) -> None:
    """Start the monitoring pipeline when Alertmanager's webhook brings a firing alert
    labelled retrain="true" (POST /alerts, bearer token; GET /healthz)."""
    from image_finetune.pipelines.alerts import (
        AlertReceiver,
        StartedAlerts,
        TriggerPolicy,
        make_server,
    )
    from image_finetune.pipelines.monitoring import default_source
    from image_finetune.pipelines.runs import connect, kfp_errors, submit_package

    if not default_source(str(pipeline_package)):
        raise ConfigError(
            f"--pipeline-package {pipeline_package}: not a monitoring pipeline "
            "compiled with --source-uri (compile-monitoring --source-uri URI): "
            "its runs would have no images to test"
        )

    def submit(run_name: str) -> str:
        with kfp_errors(host):  # a client per run: the service-account token rotates
            return submit_package(
                connect(host, namespace), pipeline_package, experiment, namespace, run_name
            )

    try:
        memory = StartedAlerts(state_file) if state_file is not None else None
    except ValueError as exc:
        raise ConfigError(f"--state-file: {exc}") from None
    try:
        receiver = AlertReceiver(
            token_file.read_text().strip(), TriggerPolicy(min_interval, memory=memory), submit
        )
    except ValueError as exc:
        raise ConfigError(f"--token-file {token_file}: {exc}") from None
    server = make_server(receiver, listen, port)
    typer.echo(
        f"alert receiver on http://{listen}:{server.server_address[1]}/alerts: starts "
        f"{pipeline_package.name} on {host} (experiment {experiment!r}), at most one "
        f"run per {min_interval} s"
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    app()
