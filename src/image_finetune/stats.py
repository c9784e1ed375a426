"""The statistics behind the decisions: per-image correctness, the paired McNemar test
and the bootstrap interval for accuracy."""

from __future__ import annotations

import numpy as np


def per_image_correct(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Whether each image's most probable class is its label."""
    return np.asarray(probabilities).argmax(axis=1) == np.asarray(labels)


def mcnemar_greater(candidate_correct: np.ndarray, champion_correct: np.ndarray) -> dict:
    """Exact one-sided McNemar test: is the candidate right more often on the same images?"""
    from scipy.stats import binomtest

    candidate_correct = np.asarray(candidate_correct, dtype=bool)
    champion_correct = np.asarray(champion_correct, dtype=bool)
    if candidate_correct.shape != champion_correct.shape:
        raise ValueError(
            f"paired test needs the same images: {candidate_correct.shape} vs "
            f"{champion_correct.shape}"
        )
    wins = int(np.sum(candidate_correct & ~champion_correct))
    losses = int(np.sum(~candidate_correct & champion_correct))
    p_value = (
        1.0
        if wins + losses == 0
        else float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)
    )
    return {"candidate_only_correct": wins, "champion_only_correct": losses, "p_value": p_value}


def bootstrap_accuracy_interval(
    correct: np.ndarray, samples: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval for accuracy."""
    from scipy.stats import bootstrap

    result = bootstrap(
        (np.asarray(correct).astype(float),),
        np.mean,
        n_resamples=samples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
        vectorized=True,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
