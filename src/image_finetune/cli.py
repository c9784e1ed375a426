"""One command per pipeline step; dvc.yaml calls these. Each is a thin wrapper
over a library function."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from image_finetune.config import Params, load_params, resolve_path
from image_finetune.errors import PipelineError

app = typer.Typer(
    add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True, help=__doc__
)
log = logging.getLogger("image_finetune")

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read")]
DataOption = Annotated[Path, typer.Option(help="canonical dataset directory")]
ModelOption = Annotated[Path, typer.Option(help="saved classifier (.keras)")]
CacheOption = Annotated[Path, typer.Option(help="feature cache, checkpoints, finished attempts")]
F = TypeVar("F", bound=Callable)


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("great_expectations", "absl", "tensorflow", "h5py", "urllib3", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def step(func: F) -> F:
    """Turn a library error into a clear message and a non-zero exit, without a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        _setup_logging()
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(exc.exit_code) from exc

    return wrapper  # type: ignore[return-value]


def _params(path: Path) -> tuple[Params, Path]:
    return load_params(path), path.resolve().parent


@app.command()
@step
def ingest(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="canonical dataset directory")] = Path("data/ingested"),
) -> None:
    """Read the data source and write canonical train/validation/test arrays."""
    from image_finetune.data.ingest import ingest as run

    config, root = _params(params)
    run(config.data, resolve_path(config.data.path, root), out)


@app.command()
@step
def validate(
    params: ParamsOption = Path("params.yaml"),
    data: DataOption = Path("data/ingested"),
    out: Annotated[Path, typer.Option(help="report directory")] = Path("reports/validation"),
) -> None:
    """Run the data-validation suites; fail on any blocking expectation."""
    from image_finetune.validation.suites import validate_dataset

    config, _ = _params(params)
    validate_dataset(data, config.validate_, out)


@app.command()
@step
def augment(
    params: ParamsOption = Path("params.yaml"),
    data: DataOption = Path("data/ingested"),
    out: Annotated[Path, typer.Option(help="policy and preview directory")] = Path(
        "reports/augment"),
) -> None:
    """Write the augmentation policy and a preview grid of augmented real images."""
    from image_finetune.augment import preview_dataset

    config, _ = _params(params)
    preview_dataset(config.augment, data, out, config.train.seed)


@app.command()
@step
def train(
    params: ParamsOption = Path("params.yaml"),
    data: DataOption = Path("data/ingested"),
    out: Annotated[Path, typer.Option(help="attempts and selected model")] = Path("models"),
    cache: CacheOption = Path(".cache/image_finetune"),
) -> None:
    """Climb the ladder: train, evaluate on validation and gate each rung until one passes."""
    from image_finetune.ladder import run_ladder

    config, root = _params(params)
    run_ladder(config, data, out, root, cache)


@app.command()
@step
def evaluate(
    params: ParamsOption = Path("params.yaml"),
    data: DataOption = Path("data/ingested"),
    model: ModelOption = Path("models/selected/model.keras"),
    split: Annotated[str, typer.Option(help="train, validation or test")] = "test",
    out: Annotated[Path, typer.Option(help="report directory")] = Path("reports/evaluation"),
) -> None:
    """Evaluate a model on one split: metrics, confusion matrix, gallery, HTML report."""
    from image_finetune.data.canonical import load_split, read_manifest
    from image_finetune.evaluate import evaluate_model

    config, _ = _params(params)
    loaded = load_split(data, split)
    evaluate_model(model, loaded.images, loaded.labels, read_manifest(data)["class_names"],
                   config.evaluate, out, f"Evaluation on {split}", config.train.seed)


@app.command()
@step
def gate(
    params: ParamsOption = Path("params.yaml"),
    evaluation: Annotated[Path, typer.Option(help="evaluate step's output")] = Path(
        "reports/evaluation"),
    out: Annotated[Path, typer.Option(help="decision JSON")] = Path("reports/gate.json"),
) -> None:
    """The final "meets requirements?" decision on the test evaluation (and the champion)."""
    from image_finetune.errors import GateFailedError
    from image_finetune.gate import final_decision, write_decision

    config, _ = _params(params)
    decision = final_decision(config, evaluation)
    write_decision(decision, out)
    typer.echo("\n".join(decision.reasons))
    if not decision.passed:
        raise GateFailedError("the model does not meet the requirements on test")


@app.command()
@step
def register(
    params: ParamsOption = Path("params.yaml"),
    data: DataOption = Path("data/ingested"),
    validation: Annotated[Path, typer.Option(help="validate step's output")] = Path(
        "reports/validation"),
    models: Annotated[Path, typer.Option(help="train step's output")] = Path("models"),
    evaluation: Annotated[Path, typer.Option(help="evaluate step's output")] = Path(
        "reports/evaluation"),
    decision: Annotated[Path, typer.Option(help="final gate decision")] = Path(
        "reports/gate.json"),
    out: Annotated[Path, typer.Option(help="registration result JSON")] = Path(
        "reports/registration.json"),
) -> None:
    """Track the run in MLflow; register the model and promote it if it beats the champion."""
    import json

    from image_finetune.registry import track_pipeline_run

    config, root = _params(params)
    outcome = track_pipeline_run(config, root, data, validation, models, evaluation, decision)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(outcome, indent=2) + "\n")
    typer.echo(json.dumps(outcome, indent=2))


@app.command()
@step
def promote(
    version: Annotated[str, typer.Argument(help="model version to make champion")],
    reason: Annotated[str, typer.Option(help="why (kept in the history)")] = "manual promotion",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Make a registered version the champion (recorded in the promotion history)."""
    from image_finetune.registry import promote as run

    config, _ = _params(params)
    typer.echo(run(config.registry, version, reason))


@app.command()
@step
def rollback(
    reason: Annotated[str, typer.Option(help="why (kept in the history)")] = "manual rollback",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Restore the champion that the current champion replaced."""
    from image_finetune.registry import rollback as run

    config, _ = _params(params)
    entry = run(config.registry, reason)
    typer.echo(f"champion is now v{entry['version']} (was v{entry['previous']})")


@app.command()
@step
def models(params: ParamsOption = Path("params.yaml")) -> None:
    """List registered versions with aliases and key metrics, then the promotion history."""
    from image_finetune.registry import list_versions, promotion_history

    config, _ = _params(params)
    typer.echo(f"{'version':>7}  {'aliases':<22} {'test acc':>8} {'macro F1':>8}  created")
    for row in list_versions(config.registry):
        accuracy = f"{row['test_accuracy']:.4f}" if row["test_accuracy"] is not None else "-"
        f1 = f"{row['test_macro_f1']:.4f}" if row["test_macro_f1"] is not None else "-"
        typer.echo(f"{row['version']:>7}  {','.join(row['aliases']) or '-':<22} {accuracy:>8} "
                   f"{f1:>8}  {row['created']}")
    for entry in promotion_history(config.registry):
        previous = f"v{entry['previous']}" if entry["previous"] else "none"
        typer.echo(f"{entry['at']} {entry['action']:<8} v{entry['version']} (previous: "
                   f"{previous}) by {entry['by']}: {entry['reason']}")


@app.command()
@step
def serve(
    params: ParamsOption = Path("params.yaml"),
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8080,
    alias: Annotated[str, typer.Option(help="registry alias to serve")] = "champion",
    poll_seconds: Annotated[float, typer.Option(help="alias polling interval")] = 30.0,
    max_batch: Annotated[int, typer.Option(help="images per request at most")] = 64,
    max_image_bytes: Annotated[int, typer.Option(help="bytes per image at most")] = 5_242_880,
) -> None:
    """Serve models:/<name>@champion over HTTP (reloads when the alias moves)."""
    import uvicorn

    from image_finetune.serve import ServeSettings, create_app

    config, _ = _params(params)
    settings = ServeSettings(model_name=config.registry.model_name,
                             tracking_uri=config.registry.tracking_uri, alias=alias,
                             poll_seconds=poll_seconds, max_batch=max_batch,
                             max_image_bytes=max_image_bytes)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@app.command("predict-batch")
@step
def predict_batch(
    source: Annotated[Path, typer.Argument(help="folder or .tar(.gz) of images")],
    out: Annotated[Path, typer.Option(help="CSV of predictions")] = Path("predictions.csv"),
    model: Annotated[str, typer.Option(help="models:/name@alias, runs:/..., or a .keras")] = "",
    data_manifest: Annotated[Path, typer.Option(help="class names for a bare .keras")] = Path(
        "data/ingested/manifest.json"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Batch inference over a folder or archive of images, to a CSV."""
    import json

    from image_finetune.serve import predict_folder

    config, _ = _params(params)
    uri = model or f"models:/{config.registry.model_name}@champion"
    names = None
    if uri.startswith(("models:/", "runs:/")):
        from image_finetune.registry import _client

        _client(config.registry)  # points MLflow at the configured store, failing fast
    elif data_manifest.exists():  # a bare model file: class names from the dataset
        names = json.loads(data_manifest.read_text())["class_names"]
    count = predict_folder(uri, source, out, class_names=names)
    typer.echo(f"{count} images -> {out}")


@app.command("export-savedmodel")
@step
def export_savedmodel(
    model: ModelOption = Path("models/selected/model.keras"),
    out: Annotated[Path, typer.Option(help="SavedModel directory")] = Path(
        "models/savedmodel/1"),
) -> None:
    """Export a TF Serving SavedModel whose serving signature takes uint8 images."""
    from image_finetune.serve import export_saved_model

    typer.echo(export_saved_model(model, out))


@app.command("check-params")
@step
def check_params(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate params.yaml and print the effective configuration."""
    config, _ = _params(params)
    typer.echo(config.model_dump_json(indent=2, by_alias=True))


if __name__ == "__main__":
    app()
