"""The gate: absolute requirements and the paired McNemar test."""

import numpy as np
import pytest

from image_finetune.config import GateParams
from image_finetune.gate import decide, mcnemar_greater

GOOD = {"accuracy": 0.9, "macro_f1": 0.9, "min_class_recall": 0.8,
        "latency": {"batch1_p95_ms": 10.0}}
PARAMS = GateParams(min_accuracy=0.85, min_macro_f1=0.85, min_class_recall=0.6,
                    max_latency_p95_ms=50, significance=0.05)


def test_all_requirements_met_passes_and_promotes_without_champion():
    decision = decide(GOOD, PARAMS, "validation")
    assert decision.passed and decision.promote
    assert all(r.startswith("ok") for r in decision.reasons)


@pytest.mark.parametrize("key,value,check", [
    ("accuracy", 0.8, "accuracy"),
    ("macro_f1", 0.5, "macro_f1"),
    ("min_class_recall", 0.3, "min_class_recall"),
])
def test_each_failed_requirement_is_a_reason(key, value, check):
    decision = decide({**GOOD, key: value}, PARAMS, "validation")
    assert not decision.passed and not decision.promote
    assert decision.reasons[0].startswith(f"FAIL {check}")
    assert sum(r.startswith("FAIL") for r in decision.reasons) == 1


def test_latency_over_budget_fails():
    decision = decide({**GOOD, "latency": {"batch1_p95_ms": 80.0}}, PARAMS, "test")
    assert not decision.passed
    assert "FAIL latency_p95_batch1: 80 ms (required <= 50 ms)" in decision.reasons


def test_mcnemar_counts_discordant_pairs_and_gives_exact_p():
    candidate = np.array([True] * 12 + [False] * 2 + [True] * 86)
    champion = np.array([False] * 12 + [True] * 2 + [True] * 86)
    result = mcnemar_greater(candidate, champion)
    assert result["candidate_only_correct"] == 12 and result["champion_only_correct"] == 2
    # P(X >= 12 | n=14, p=0.5) = (C(14,12) + C(14,13) + C(14,14)) / 2**14
    assert result["p_value"] == pytest.approx((91 + 14 + 1) / 2**14)


def test_identical_models_are_not_significantly_better():
    same = np.array([True, False, True, True])
    assert mcnemar_greater(same, same)["p_value"] == 1.0


def test_candidate_inside_the_noise_passes_but_is_not_promoted():
    rng = np.random.default_rng(0)
    champion = rng.random(1000) < 0.90
    candidate = champion.copy()
    flips = rng.choice(1000, 20, replace=False)
    candidate[flips] = ~candidate[flips]  # about as many wins as losses
    decision = decide(GOOD, PARAMS, "test", candidate, {"correct": champion, "version": "3"})
    assert decision.passed and not decision.promote
    expected = "FAIL beats_champion: McNemar vs champion v3"
    assert any(r.startswith(expected) for r in decision.reasons)


def test_clearly_better_candidate_is_promoted():
    champion = np.array([True] * 850 + [False] * 150)
    candidate = np.array([True] * 850 + [True] * 100 + [False] * 50)
    decision = decide(GOOD, PARAMS, "test", candidate, {"correct": champion, "version": "1"})
    assert decision.passed and decision.promote


def test_champion_comparison_needs_the_candidates_results_on_the_same_images():
    with pytest.raises(ValueError, match="candidate's per-image results"):
        decide(GOOD, PARAMS, "test", None, {"correct": np.ones(3, bool)})
    with pytest.raises(ValueError, match="same images"):
        mcnemar_greater(np.ones(3, bool), np.ones(4, bool))
