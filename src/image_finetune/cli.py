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
    import numpy as np

    from image_finetune.augment import write_preview
    from image_finetune.data.canonical import load_split

    config, _ = _params(params)
    train = load_split(data, "train")
    labels = np.asarray(train.labels)
    # One image of each class in turn, so the preview shows the whole label set.
    firsts = [np.flatnonzero(labels == c)[:4] for c in np.unique(labels)]
    picks = np.stack(firsts, axis=1).ravel()[: config.augment.preview_images]
    write_preview(config.augment, np.asarray(train.images)[np.sort(picks)], out, config.train.seed)


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
    """The final "meets requirements?" decision on the test evaluation."""
    import json

    from image_finetune.errors import GateFailedError
    from image_finetune.gate import decide, write_decision

    config, _ = _params(params)
    metrics = json.loads((evaluation / "details.json").read_text())
    decision = decide(metrics, config.gate, "test")
    write_decision(decision, out)
    typer.echo("\n".join(decision.reasons))
    if not decision.passed:
        raise GateFailedError("the model does not meet the requirements on test")


@app.command("check-params")
@step
def check_params(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate params.yaml and print the effective configuration."""
    config, _ = _params(params)
    typer.echo(config.model_dump_json(indent=2, by_alias=True))


if __name__ == "__main__":
    app()
