"""The "meets requirements?" decision, with every check behind it.

The gate is pure: it gets the candidate's metrics and per-image results, and the
champion's per-image results where there is a champion (as TFX's Evaluator gets its
baseline); it never asks the registry itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from image_finetune.config import GateParams
from image_finetune.stats import mcnemar_greater


@dataclass(frozen=True)
class Check:
    """One requirement: what was measured against what was required."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str

    @property
    def line(self) -> str:
        """``ok   name: detail`` or ``FAIL name: detail``."""
        return f"{'ok  ' if self.passed else 'FAIL'} {self.name}: {self.detail}"


@dataclass(frozen=True)
class ChampionResults:
    """The registry's champion on the candidate's test images: its version and whether it
    was right on each image (in the candidate's order)."""

    version: str
    correct: np.ndarray


@dataclass
class Decision:
    """Pass or fail on the requirements, whether to promote, and every check behind it."""

    passed: bool
    promote: bool
    checks: list[Check] = field(default_factory=list)
    split: str = "validation"

    @property
    def failures(self) -> list[Check]:
        """The checks that failed (``beats_champion`` among them when it failed)."""
        return [c for c in self.checks if not c.passed]

    @property
    def reasons(self) -> list[str]:
        """Readable lines, failures first."""
        return [c.line for c in sorted(self.checks, key=lambda c: c.passed)]

    def failure_summary(self) -> str:
        """The failed checks on one line (empty when none failed)."""
        return "; ".join(c.line for c in self.failures)

    def to_json(self) -> dict:
        """The decision file's content."""
        return {
            "passed": self.passed,
            "promote": self.promote,
            "split": self.split,
            "reasons": self.reasons,
            "checks": [asdict(c) for c in self.checks],
        }

    @classmethod
    def from_json(cls, payload: dict) -> Decision:
        """A decision read back from its file."""
        return cls(
            passed=payload["passed"],
            promote=payload["promote"],
            checks=[Check(**c) for c in payload["checks"]],
            split=payload["split"],
        )


def _threshold(
    name: str, value: float, threshold: float, at_least: bool, unit: str = "", note: str = ""
) -> Check:
    passed = value >= threshold if at_least else value <= threshold
    sign = ">=" if at_least else "<="
    return Check(
        name,
        bool(passed),
        float(value),
        float(threshold),
        f"{value:.4g}{unit} (required {sign} {threshold:.4g}{unit}{note})",
    )


def _accuracy_check(metrics: dict, threshold: float) -> Check:
    """The accuracy check, its 95% interval beside the threshold: a threshold inside the
    interval means the split is too small for this decision to be more than a coin toss."""
    if "accuracy_ci95" not in metrics:
        return _threshold("accuracy", metrics["accuracy"], threshold, True)
    low, high = metrics["accuracy_ci95"]
    check = _threshold(
        "accuracy", metrics["accuracy"], threshold, True, note=f"; 95% CI {low:.4g}-{high:.4g}"
    )
    if not undecided(metrics, threshold):
        return check
    return Check(
        check.name,
        check.passed,
        check.value,
        check.threshold,
        check.detail + " UNDECIDED: the threshold is inside the interval, the split is too small",
    )


def undecided(metrics: dict, threshold: float) -> bool:
    """Whether the accuracy threshold lies inside the accuracy's 95% interval."""
    if "accuracy_ci95" not in metrics:
        return False
    low, high = metrics["accuracy_ci95"]
    return low < threshold <= high


def champion_check(
    candidate_correct: np.ndarray, champion: ChampionResults, significance: float
) -> Check:
    test = mcnemar_greater(np.asarray(candidate_correct), np.asarray(champion.correct))
    return Check(
        "beats_champion",
        test["p_value"] < significance,
        test["p_value"],
        significance,
        f"McNemar vs champion v{champion.version}: candidate-only correct "
        f"{test['candidate_only_correct']}, champion-only correct "
        f"{test['champion_only_correct']}, one-sided p={test['p_value']:.4g} "
        f"(required < {significance})",
    )


def decide(
    metrics: dict,
    params: GateParams,
    split: str,
    candidate_correct: np.ndarray | None = None,
    champion: ChampionResults | None = None,
) -> Decision:
    """Check absolute requirements, and where a champion exists, a paired McNemar test.

    ``passed``: every requirement is met (the model may be registered).
    ``promote``: passed, and there is no champion or the candidate beats it significantly.
    """
    checks = [
        _accuracy_check(metrics, params.min_accuracy),
        _threshold("macro_f1", metrics["macro_f1"], params.min_macro_f1, True),
        _threshold("min_class_recall", metrics["min_class_recall"], params.min_class_recall, True),
        _threshold(
            "latency_p95_batch1",
            metrics["latency"]["batch1_p95_ms"],
            params.max_latency_p95_ms,
            False,
            " ms",
        ),
    ]
    passed = all(c.passed for c in checks)
    beats = True
    if champion is not None:
        if candidate_correct is None:
            raise ValueError("a champion comparison needs the candidate's per-image results")
        checks.append(champion_check(candidate_correct, champion, params.significance))
        beats = checks[-1].passed
    return Decision(passed=passed, promote=passed and beats, checks=checks, split=split)
