"""What every command-line entry point shares: logging, and turning a pipeline error into
a clear message and its exit code instead of a traceback."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from image_finetune.errors import PipelineError

F = TypeVar("F", bound=Callable)
QUIET_LOGGERS = ("great_expectations", "absl", "tensorflow", "h5py", "urllib3", "botocore")


def setup_logging() -> None:
    """Timestamped INFO logs on stderr; third-party chatter at WARNING."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def reported(func: F) -> F:
    """A command whose pipeline errors end in ``error: <message>`` and the error's exit
    code, without a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        setup_logging()
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(exc.exit_code) from exc

    return wrapper  # type: ignore[return-value]
