"""The "meets requirements?" decision, with every reason."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from image_finetune.config import GateParams, Params


@dataclass
class Check:
    """One requirement: what was measured against what was required."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str


@dataclass
class Decision:
    """Pass or fail on the requirements, whether to promote, and every check behind it."""

    passed: bool
    promote: bool
    checks: list[Check] = field(default_factory=list)
    split: str = "validation"

    @property
    def reasons(self) -> list[str]:
        """Readable lines, failures first."""
        ordered = sorted(self.checks, key=lambda c: c.passed)
        return [f"{'ok  ' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in ordered]

    def to_json(self) -> dict:
        """The decision file's content."""
        return {"passed": self.passed, "promote": self.promote, "split": self.split,
                "reasons": self.reasons,
                "checks": [asdict(c) for c in self.checks]}


def mcnemar_greater(candidate_correct: np.ndarray, champion_correct: np.ndarray) -> dict:
    """Exact one-sided McNemar test: is the candidate right more often on the same images?"""
    from scipy.stats import binomtest

    if candidate_correct.shape != champion_correct.shape:
        raise ValueError(
            f"paired test needs the same images: {candidate_correct.shape} vs "
            f"{champion_correct.shape}")
    wins = int(np.sum(candidate_correct & ~champion_correct))
    losses = int(np.sum(~candidate_correct & champion_correct))
    p_value = 1.0 if wins + losses == 0 else float(
        binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)
    return {"candidate_only_correct": wins, "champion_only_correct": losses, "p_value": p_value}


def _threshold(name: str, value: float, threshold: float, at_least: bool, unit: str = "") -> Check:
    passed = value >= threshold if at_least else value <= threshold
    sign = ">=" if at_least else "<="
    return Check(name, bool(passed), float(value), float(threshold),
                 f"{value:.4g}{unit} (required {sign} {threshold:.4g}{unit})")


def decide(
    metrics: dict,
    params: GateParams,
    split: str,
    candidate_correct: np.ndarray | None = None,
    champion: dict | None = None,
) -> Decision:
    """Check absolute requirements, and where a champion exists, a paired McNemar test.

    ``passed``: every requirement is met (the model may be registered).
    ``promote``: passed, and there is no champion or the candidate beats it significantly.

    ``champion`` holds ``correct`` (bool per image, in the order of
    ``candidate_correct``) and ``version``.
    """
    checks = [
        _threshold("accuracy", metrics["accuracy"], params.min_accuracy, True),
        _threshold("macro_f1", metrics["macro_f1"], params.min_macro_f1, True),
        _threshold("min_class_recall", metrics["min_class_recall"], params.min_class_recall, True),
        _threshold("latency_p95_batch1", metrics["latency"]["batch1_p95_ms"],
                   params.max_latency_p95_ms, False, " ms"),
    ]
    passed = all(c.passed for c in checks)
    beats = True
    if champion is not None:
        if candidate_correct is None:
            raise ValueError("a champion comparison needs the candidate's per-image results")
        test = mcnemar_greater(np.asarray(candidate_correct), np.asarray(champion["correct"]))
        beats = test["p_value"] < params.significance
        checks.append(Check(
            "beats_champion", beats, test["p_value"], params.significance,
            f"McNemar vs champion v{champion.get('version', '?')}: candidate-only correct "
            f"{test['candidate_only_correct']}, champion-only correct "
            f"{test['champion_only_correct']}, one-sided p={test['p_value']:.4g} "
            f"(required < {params.significance})"))
    return Decision(passed=passed, promote=passed and beats, checks=checks, split=split)


def write_decision(decision: Decision, path: Path) -> None:
    """Write the decision JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(decision.to_json(), indent=2) + "\n")


def final_decision(params: Params, evaluation_dir: Path) -> Decision:
    """The final gate on the test evaluation, with a McNemar test where a champion exists."""
    from image_finetune.evaluate import PREDICTIONS_FILE
    from image_finetune.registry import champion_reference

    metrics = json.loads((evaluation_dir / "details.json").read_text())
    predictions = np.load(evaluation_dir / PREDICTIONS_FILE)
    labels = predictions["labels"]
    correct = predictions["probabilities"].argmax(axis=1) == labels
    champion = champion_reference(params.registry, labels)
    return decide(metrics, params.gate, "test", correct, champion)
