"""The gate: absolute requirements, the paired McNemar test, the decision as data, and the
retrain loop's rule."""

import numpy as np
import pytest

from image_finetune.config import GateParams
from image_finetune.errors import GateFailedError
from image_finetune.gate import ChampionResults, Decision, decide, undecided
from image_finetune.ladder import AttemptRecord, ladder_metrics, ladder_verdict
from image_finetune.stats import mcnemar_greater

GOOD = {
    "accuracy": 0.9,
    "macro_f1": 0.9,
    "min_class_recall": 0.8,
    "latency": {"batch1_p95_ms": 10.0},
}
PARAMS = GateParams(
    min_accuracy=0.85,
    min_macro_f1=0.85,
    min_class_recall=0.6,
    max_latency_p95_ms=50,
    significance=0.05,
)


def test_all_requirements_met_passes_and_promotes_without_champion():
    decision = decide(GOOD, PARAMS, "validation")
    assert decision.passed and decision.promote
    assert all(r.startswith("ok") for r in decision.reasons)


@pytest.mark.parametrize(
    "key,value,check",
    [
        ("accuracy", 0.8, "accuracy"),
        ("macro_f1", 0.5, "macro_f1"),
        ("min_class_recall", 0.3, "min_class_recall"),
    ],
)
def test_each_failed_requirement_is_a_reason(key, value, check):
    decision = decide({**GOOD, key: value}, PARAMS, "validation")
    assert not decision.passed and not decision.promote
    assert decision.reasons[0].startswith(f"FAIL {check}")
    assert sum(r.startswith("FAIL") for r in decision.reasons) == 1


def test_latency_over_budget_fails():
    decision = decide({**GOOD, "latency": {"batch1_p95_ms": 80.0}}, PARAMS, "test")
    assert not decision.passed
    assert "FAIL latency_p95_batch1: 80 ms (required <= 50 ms)" in decision.reasons


def test_the_accuracy_interval_stands_beside_the_threshold():
    decision = decide({**GOOD, "accuracy_ci95": [0.88, 0.92]}, PARAMS, "validation")
    assert "ok   accuracy: 0.9 (required >= 0.85; 95% CI 0.88-0.92)" in decision.reasons
    assert not undecided({**GOOD, "accuracy_ci95": [0.88, 0.92]}, PARAMS.min_accuracy)


@pytest.mark.parametrize(
    "accuracy,interval,passed", [(0.9, [0.8, 0.97], True), (0.82, [0.7, 0.9], False)]
)
def test_a_threshold_inside_the_interval_is_flagged_undecided(accuracy, interval, passed):
    metrics = {**GOOD, "accuracy": accuracy, "accuracy_ci95": interval}
    decision = decide(metrics, PARAMS, "validation")
    assert decision.passed is passed and undecided(metrics, PARAMS.min_accuracy)
    assert "UNDECIDED: the threshold is inside the interval" in decision.reasons[0]


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
    decision = decide(GOOD, PARAMS, "test", candidate, ChampionResults("3", champion))
    assert decision.passed and not decision.promote
    expected = "FAIL beats_champion: McNemar vs champion v3"
    assert any(r.startswith(expected) for r in decision.reasons)


def test_clearly_better_candidate_is_promoted():
    champion = np.array([True] * 850 + [False] * 150)
    candidate = np.array([True] * 850 + [True] * 100 + [False] * 50)
    decision = decide(GOOD, PARAMS, "test", candidate, ChampionResults("1", champion))
    assert decision.passed and decision.promote


def test_champion_comparison_needs_the_candidates_results_on_the_same_images():
    with pytest.raises(ValueError, match="candidate's per-image results"):
        decide(GOOD, PARAMS, "test", None, ChampionResults("1", np.ones(3, bool)))
    with pytest.raises(ValueError, match="same images"):
        mcnemar_greater(np.ones(3, bool), np.ones(4, bool))


def test_failed_checks_are_data_and_survive_the_decision_file():
    decision = decide({**GOOD, "accuracy": 0.5, "macro_f1": 0.4}, PARAMS, "validation")
    assert [c.name for c in decision.failures] == ["accuracy", "macro_f1"]
    assert decision.failures[0].value == 0.5 and decision.failures[0].threshold == 0.85
    assert decision.failure_summary().startswith("FAIL accuracy: 0.5 (required >= 0.85); ")
    again = Decision.from_json(decision.to_json())
    assert again == decision and again.failures == decision.failures


def record(index: int, passed: bool) -> AttemptRecord:
    failures = () if passed else (f"FAIL accuracy: 0.{index} (required >= 0.85)",)
    return AttemptRecord(index, f"rung-{index}", passed, failures, 0.5, 0.5)


@pytest.mark.parametrize(
    "outcomes,winner",
    [
        ([True], 0),  # the first rung passes: the loop stops there
        ([False], None),  # rungs remain: retrain
        ([False, False, True], 2),  # fail, fail, pass over three rungs
    ],
)
def test_the_ladder_stops_at_the_first_pass_and_retrains_while_rungs_remain(outcomes, winner):
    records = [record(i, passed) for i, passed in enumerate(outcomes)]
    assert ladder_verdict(records, rungs=3) == winner


def test_the_last_rung_failing_fails_the_run_with_every_attempts_reasons():
    records = [record(0, False), record(1, False)]
    with pytest.raises(GateFailedError) as failed:
        ladder_verdict(records, rungs=2)
    assert str(failed.value).splitlines() == [
        "every rung of the ladder failed the gate:",
        "  attempt 0 (rung-0): FAIL accuracy: 0.0 (required >= 0.85)",
        "  attempt 1 (rung-1): FAIL accuracy: 0.1 (required >= 0.85)",
    ]
    assert AttemptRecord.from_json(records[1].to_json()) == records[1]


def test_the_ladders_figures_are_flat_numbers_per_attempt():
    records = [
        AttemptRecord(0, "head", False, ("FAIL accuracy",), 0.61, 0.6),
        AttemptRecord(1, "blocks", True, (), 0.9, 0.89),
    ]
    figures = ladder_metrics(records, 3)
    assert figures == {
        "rungs": 3,
        "attempts": 2,
        "selected": 1,
        "attempt_0.val_accuracy": 0.61,
        "attempt_0.val_macro_f1": 0.6,
        "attempt_0.passed": 0,
        "attempt_1.val_accuracy": 0.9,
        "attempt_1.val_macro_f1": 0.89,
        "attempt_1.passed": 1,
    }
    assert "selected" not in ladder_metrics(records[:1], 3)  # nothing passed: nothing selected
