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

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
log = logging.getLogger("image_finetune")

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read")]
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
    data: Annotated[Path, typer.Option(help="canonical dataset directory")] = Path("data/ingested"),
    out: Annotated[Path, typer.Option(help="report directory")] = Path("reports/validation"),
) -> None:
    """Run the data-validation suites; fail on any blocking expectation."""
    from image_finetune.validation.suites import validate_dataset

    config, _ = _params(params)
    validate_dataset(data, config.validate_, out)


@app.command("check-params")
@step
def check_params(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate params.yaml and print the effective configuration."""
    config, _ = _params(params)
    typer.echo(config.model_dump_json(indent=2, by_alias=True))


if __name__ == "__main__":
    app()
