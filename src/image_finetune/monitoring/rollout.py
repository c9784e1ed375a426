"""The live promotion decision: the challenger replaces the champion only on labelled live
evidence, by the offline gate's own rule (the exact one-sided McNemar test on paired
per-image results, ``gate.champion_check``). Agreement and confidence are shown beside it,
never trusted: two models can agree and both be wrong, and confidence is not accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from image_finetune.gate import ChampionResults, Check, champion_check
from image_finetune.monitoring.feedback_store import LabelledPairs

DEFAULT_MIN_PAIRS = 100


@dataclass(frozen=True)
class RolloutDecision:
    """Whether to promote the challenger, the evidence, and every reason."""

    promote: bool
    champion: str
    challenger: str
    evidence: dict
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "promote": self.promote,
            "champion": self.champion,
            "challenger": self.challenger,
            "evidence": self.evidence,
            "reasons": self.reasons,
        }


def evidence(pairs: LabelledPairs) -> dict:
    """What the labelled pairs show: counts, each side's accuracy and mean confidence, and
    how often the two agree."""
    count = len(pairs)

    def mean(values: np.ndarray) -> float | None:
        return float(np.mean(values)) if count else None

    return {
        "labelled_pairs": count,
        "agreement": mean(pairs.champion == pairs.challenger),
        "champion_accuracy": mean(pairs.champion == pairs.labels),
        "challenger_accuracy": mean(pairs.challenger == pairs.labels),
        "champion_confidence": mean(pairs.champion_confidence),
        "challenger_confidence": mean(pairs.challenger_confidence),
    }


def decide_rollout(
    pairs: LabelledPairs, champion: str, challenger: str, min_pairs: int, significance: float
) -> RolloutDecision:
    """Promote when there are at least ``min_pairs`` labelled pairs and the challenger is
    right significantly more often than the champion on them (one-sided exact McNemar)."""
    shown = evidence(pairs)
    if len(pairs) < min_pairs:
        reason = (
            f"not enough labelled pairs: {len(pairs)} of the {min_pairs} required "
            f"(agreement {fmt(shown['agreement'])}, mean confidence champion "
            f"{fmt(shown['champion_confidence'])} / challenger "
            f"{fmt(shown['challenger_confidence'])}: shown, not trusted)"
        )
        return RolloutDecision(False, champion, challenger, shown, [reason])
    check: Check = champion_check(
        pairs.challenger == pairs.labels,
        ChampionResults(champion, pairs.champion == pairs.labels),
        significance,
    )
    shown.update(p_value=check.value, significance=significance)
    return RolloutDecision(check.passed, champion, challenger, shown, [check.line])


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
