"""The retrain loop's rule: attempt k passes and wins, or fails and rung k+1 retrains;
when the last rung fails, the run fails with every attempt's failed checks.

``dvc repro`` (one ``train`` stage) and the Kubeflow pipeline (one gate per unrolled
attempt) both decide through :func:`ladder_verdict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from image_finetune.errors import GateFailedError
from image_finetune.gate import Decision


@dataclass(frozen=True)
class AttemptRecord:
    """What the loop remembers of one attempt."""

    index: int
    rung: str
    passed: bool
    failures: tuple[str, ...]
    val_accuracy: float
    val_macro_f1: float

    @classmethod
    def of(cls, index: int, rung: str, decision: Decision, metrics: dict) -> AttemptRecord:
        """The record of an attempt from its decision and validation metrics."""
        return cls(
            index,
            rung,
            decision.passed,
            tuple(c.line for c in decision.failures),
            float(metrics["accuracy"]),
            float(metrics["macro_f1"]),
        )

    def to_json(self) -> dict:
        """As stored in decision files and the loop's summary."""
        return {**asdict(self), "failures": list(self.failures)}

    @classmethod
    def from_json(cls, payload: dict) -> AttemptRecord:
        """A record read back from a decision file or summary."""
        return cls(**{**payload, "failures": tuple(payload["failures"])})


def ladder_metrics(records: list[AttemptRecord], rungs: int) -> dict[str, float]:
    """The loop's metrics as flat name: number pairs (a DVC metrics file): each attempt's validation
    accuracy and macro F1 and whether it passed, the rungs, and the selected attempt (absent
    when none passed)."""
    values: dict[str, float] = {"rungs": rungs, "attempts": len(records)}
    for record in records:
        name = f"attempt_{record.index}"
        values |= {
            f"{name}.val_accuracy": record.val_accuracy,
            f"{name}.val_macro_f1": record.val_macro_f1,
            f"{name}.passed": int(record.passed),
        }
    winner = next((r.index for r in records if r.passed), None)
    return values if winner is None else {**values, "selected": winner}


def ladder_verdict(records: list[AttemptRecord], rungs: int) -> int | None:
    """The index of the attempt that passed; None while rungs remain to try.

    Raises GateFailedError, listing every attempt's failed checks, once the last rung
    has failed.
    """
    for record in records:
        if record.passed:
            return record.index
    if records and records[-1].index >= rungs - 1:
        lines = [f"attempt {r.index} ({r.rung}): " + "; ".join(r.failures) for r in records]
        raise GateFailedError("every rung of the ladder failed the gate:\n  " + "\n  ".join(lines))
    return None
