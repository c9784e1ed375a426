"""What every command-line entry point shares: logging, and turning a pipeline error into
a clear message and its exit code instead of a traceback."""

from __future__ import annotations

import functools
import logging
import signal
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer

from image_finetune.errors import PipelineError, exit_on_termination, signal_exit_code
from image_finetune.extras import raise_missing_extra

F = TypeVar("F", bound=Callable)
QUIET_LOGGERS = ("great_expectations", "absl", "tensorflow", "h5py", "urllib3", "botocore")


def setup_logging() -> None:
    """Timestamped INFO logs on stderr; third-party chatter at WARNING."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def reported(func: F) -> F:
    """A command whose pipeline errors end in ``error: <message>`` and the error's exit
    code, without a traceback; so does an optional package its extra did not install."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        setup_logging()
        exit_on_termination()
        try:
            try:
                return func(*args, **kwargs)
            except ModuleNotFoundError as exc:
                raise_missing_extra(exc)
        except PipelineError as exc:
            raise typer.Exit(report(exc)) from exc
        except KeyboardInterrupt:
            typer.secho(
                "error: interrupted; nothing half-written was kept", fg=typer.colors.RED, err=True
            )
            raise typer.Exit(signal_exit_code(signal.SIGINT)) from None

    return wrapper  # type: ignore[return-value]


def report(error: PipelineError) -> int:
    """``error: <message>`` on stderr; the error's exit code."""
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    return error.exit_code


def exit_without_extra(error: ModuleNotFoundError) -> NoReturn:
    """For an entry point whose own imports need an extra (``image-finetune-pipeline``): the
    extra to install and the usage exit code, or ``error`` as it is when it is not that."""
    try:
        raise_missing_extra(error)
    except PipelineError as missing:
        raise SystemExit(report(missing)) from None
