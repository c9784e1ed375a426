"""Every error a step reports to its user, with the exit code the CLI gives it."""

from __future__ import annotations

import signal
import threading

MAX_LISTED = 20
# Exit codes outside the errors below: a pipeline run that did not succeed (the KFP
# runner's CLI), and a process ended by a signal (the shell's 128 + signal number).
RUN_FAILED = 1
SIGNAL_EXIT_BASE = 128


def signal_exit_code(signum: int) -> int:
    """The exit code of a process ended by signal ``signum`` (130 for Ctrl-C, 143 for
    SIGTERM), as a shell reports it."""
    return SIGNAL_EXIT_BASE + signum


def exit_on_termination() -> None:
    """SIGTERM (what DVC, Kubeflow and Kubernetes send to cancel) exits like Ctrl-C does,
    through every ``finally`` and cleanup on the way, with exit code 143."""

    def terminate(signum, _frame):
        raise SystemExit(signal_exit_code(signum))

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)


class PipelineError(Exception):
    """Base of the errors that end a step with a clear message and no traceback."""

    exit_code = 1


class ConfigError(PipelineError, ValueError):
    """params.yaml is missing, unreadable or invalid; the message names each bad key."""

    exit_code = 2


class MissingExtraError(PipelineError, ImportError):
    """A command needs an optional package that is not installed; the message names the
    extra (pyproject.toml's optional dependencies) that installs it. A usage error: the same
    exit code as a bad option."""

    exit_code = 2

    def __init__(self, package: str, extra: str):
        self.package, self.extra = package, extra
        super().__init__(
            f"this needs {package!r}, which is not installed: it comes with the {extra!r} "
            f"extra: pip install 'image-finetune[{extra}]' (in a clone: uv sync --extra {extra})"
        )


class IngestError(PipelineError, ValueError):
    """The source cannot be ingested; the message names the offending files."""

    exit_code = 3

    def __init__(self, summary: str, problems: list[str] | None = None):
        self.summary = summary
        self.problems = problems or []
        listed = "\n".join(f"  - {p}" for p in self.problems[:MAX_LISTED])
        more = len(self.problems) - MAX_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        count = f" ({len(self.problems)} problems)" if self.problems else ""
        super().__init__(f"{summary}{count}" + (f":\n{listed}{tail}" if listed else ""))


class DataValidationError(PipelineError):
    """A blocking data expectation failed; the message lists each one."""

    exit_code = 4


class MissingInputError(PipelineError, FileNotFoundError):
    """A step's input (dataset, model, weights) is not where it should be."""

    exit_code = 5


class GateFailedError(PipelineError):
    """No model met the requirements; the message gives every reason."""

    exit_code = 6


class ServiceError(PipelineError):
    """A service (MLflow server, S3) is unreachable or refused the request."""

    exit_code = 7


class CorruptInputError(MissingInputError):
    """A step's input is there but is not what its manifest says (truncated, changed): the
    step that wrote it must run again."""


class TrainingError(PipelineError):
    """Training diverged or could not run."""

    exit_code = 8


class RegistryError(PipelineError):
    """The registry refused an operation (no such version, nothing to roll back to, ...)."""

    exit_code = 9


class RegistryStateError(RegistryError):
    """The registry's own records are not as this code writes them (a hand-edited or
    malformed promotion-history tag): the message names the tag."""


class LockLostError(RegistryError):
    """The promotion lock was taken over (its holder paused or stalled past its lease):
    the holder stops without writing; running the command again is safe."""


class EngineError(PipelineError):
    """An exported engine does not give the Keras model's answers (beyond the documented
    tolerance): it is not served; the message gives the figures."""

    exit_code = 10


class TrainJobError(PipelineError):
    """A distributed rung failed, timed out or was refused; the message says why and where
    its logs are. (It shares EngineError's exit code: kept as it was.)"""

    exit_code = 10
