"""The monitoring domain: image statistics, the reference profile and the window tests, on
known distributions: drift is found where it was planted and not where it was absent."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from image_finetune.monitoring import drift
from image_finetune.monitoring.profile import (
    ProfileError,
    ReferenceProfile,
    build_profile,
    fit_projection,
)
from image_finetune.monitoring.summaries import IMAGE_STATISTICS, image_statistics

CLASSES = 10
WIDTH = 48


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def summaries(rng, n, *, shift=0.0, confident=3.0, skew_class=None, stats_shift=0.0):
    """Synthetic summaries of n images: probabilities from logits with a peak at the true
    class, embeddings around class centres, image statistics around fixed means."""
    labels = rng.integers(0, CLASSES, n)
    if skew_class is not None:
        labels[: n // 2] = skew_class
    logits = rng.normal(0, 1, (n, CLASSES))
    logits[np.arange(n), labels] += confident
    centres = np.random.default_rng(99).normal(0, 3, (CLASSES, WIDTH))
    embeddings = centres[labels] + rng.normal(0, 1, (n, WIDTH)) + shift
    stats = rng.normal([0.45, 0.2, 0.3, 0.01], [0.1, 0.05, 0.1, 0.004], (n, 4)) + stats_shift
    return softmax(logits).astype(np.float32), embeddings.astype(np.float32), stats


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(0)
    train = summaries(rng, 3000)[1]
    probabilities, embeddings, stats = summaries(rng, 2000)
    return build_profile(
        [f"c{i}" for i in range(CLASSES)],
        probabilities,
        embeddings,
        stats,
        train,
        dimensions=8,
        model_version="3",
    )


def window_of(profile, probabilities, embeddings, stats) -> drift.Window:
    return drift.Window(probabilities, profile.project(embeddings), stats)


def test_a_clean_window_raises_no_alarm(profile):
    result = drift.test_window(
        profile, window_of(profile, *summaries(np.random.default_rng(1), 500)), permutations=200
    )
    assert not result.drift
    assert set(result.tests) == set(drift.TESTS)
    assert all(0.0 <= t.raw_p_value <= t.p_value <= 1.0 for t in result.tests.values())


def test_false_alarms_stay_near_alpha(profile):
    rng = np.random.default_rng(2)
    alarms = [
        drift.test_window(
            profile, window_of(profile, *summaries(rng, 200)), permutations=200, seed=i
        ).drift
        for i in range(30)
    ]
    assert sum(alarms) <= 3  # 5% of 30 is 1.5; Bonferroni makes it rarer still


@pytest.mark.parametrize(
    ("planted", "expected"),
    [
        ({"shift": 1.0}, "embedding_mmd"),
        ({"confident": 1.0}, "confidence"),
        ({"skew_class": 3}, "predicted_classes"),
        ({"stats_shift": np.array([0.06, 0, 0, 0])}, "brightness"),
        ({"stats_shift": np.array([0, 0, 0, 0.004])}, "sharpness"),
    ],
)
def test_planted_drift_is_found_by_its_test(profile, planted, expected):
    result = drift.test_window(
        profile,
        window_of(profile, *summaries(np.random.default_rng(3), 500, **planted)),
        permutations=200,
    )
    assert result.drift
    assert result.tests[expected].drift, result.to_dict()["tests"]


def test_class_probability_ks_sees_a_prior_shift(profile):
    result = drift.test_window(
        profile,
        window_of(profile, *summaries(np.random.default_rng(4), 500, skew_class=7)),
        permutations=200,
    )
    assert result.tests["class_probabilities"].drift


def test_a_rise_in_confidence_is_not_a_drop(profile):
    _, p_value = drift.confidence_drop_test(
        profile.probabilities, summaries(np.random.default_rng(5), 500, confident=6.0)[0]
    )
    assert p_value > 0.5


def test_the_mmd_test_is_exact_under_the_null_and_powerful_under_a_shift():
    rng = np.random.default_rng(6)
    same = [
        drift.mmd_test(rng.normal(size=(200, 4)), rng.normal(size=(100, 4)), 99, rng)[1]
        for _ in range(60)
    ]
    assert 0.02 <= np.mean(np.array(same) < 0.1) <= 0.25  # uniform p-values: ~10%
    _, p_value = drift.mmd_test(rng.normal(size=(200, 4)), rng.normal(0.5, 1, (100, 4)), 99, rng)
    assert p_value == pytest.approx(0.01)


def test_the_chi_square_test_survives_empty_and_rare_classes():
    reference = np.eye(CLASSES)[np.r_[np.repeat(np.arange(5), 200), [5, 6]]]  # 5, 6 rare
    same = np.eye(CLASSES)[np.repeat(np.arange(5), 100)]
    assert drift.predicted_class_test(reference, same)[1] > 0.5
    flooded = np.eye(CLASSES)[np.r_[np.repeat(np.arange(5), 60), np.full(200, 6)]]
    assert drift.predicted_class_test(reference, flooded)[1] < 1e-6
    one_class = np.eye(CLASSES)[np.zeros(50, dtype=int)]
    assert drift.predicted_class_test(one_class, one_class) == (0.0, 1.0)


def test_a_window_grows_by_image_and_by_batch(profile):
    window = drift.Window.empty(profile.dimensions, CLASSES)
    probabilities, embeddings, stats = summaries(np.random.default_rng(7), 30)
    projected = profile.project(embeddings)
    window.append(probabilities[0], projected[0], stats[0])
    window.append(probabilities[1:], projected[1:], stats[1:])
    assert len(window) == 30
    np.testing.assert_allclose(window.projected, projected)
    assert set(window.arrays()) == {"probabilities", "projected", "image_stats"}
    with pytest.raises(ValueError, match="widths"):
        window.append(probabilities[0], projected[0, :3], stats[0])


def test_bad_windows_and_settings_are_refused(profile):
    probabilities, embeddings, stats = summaries(np.random.default_rng(8), 10)
    with pytest.raises(ValueError, match="20 images at least"):
        drift.test_window(profile, window_of(profile, probabilities, embeddings, stats))
    with pytest.raises(ValueError, match="disagree"):
        drift.Window(probabilities, profile.project(embeddings)[:5], stats)
    with pytest.raises(ValueError, match="permutations"):
        drift.test_window(
            profile,
            window_of(profile, *summaries(np.random.default_rng(8), 50)),
            permutations=10**6,
        )
    with pytest.raises(ValueError, match="use 160 at least"):
        drift.test_window(
            profile, window_of(profile, *summaries(np.random.default_rng(8), 50)), permutations=100
        )


def test_the_result_is_json_ready(profile):
    import json

    result = drift.test_window(
        profile, window_of(profile, *summaries(np.random.default_rng(9), 100)), permutations=160
    )
    loaded = json.loads(json.dumps(result.to_dict()))
    assert loaded["model_version"] == "3" and loaded["window_size"] == 100
    assert set(loaded["tests"]["embedding_mmd"]) == {"statistic", "p_value", "drift", "raw_p_value"}


def test_a_profile_round_trips_and_refuses_damage(profile, tmp_path):
    loaded = ReferenceProfile.load(profile.save(tmp_path / "p"))
    assert loaded.class_names == profile.class_names and loaded.model_version == "3"
    np.testing.assert_allclose(loaded.projected, profile.projected)
    (tmp_path / "p" / "profile.npz").write_bytes(b"not an npz")
    with pytest.raises(ProfileError, match="unreadable"):
        ReferenceProfile.load(tmp_path / "p")
    with pytest.raises(ProfileError, match="no profile.json"):
        ReferenceProfile.load(tmp_path / "missing")


def test_the_projection_is_a_pca_of_the_training_features():
    rng = np.random.default_rng(10)
    features = rng.normal(size=(500, 6)) * [5, 3, 1, 0.1, 0.1, 0.1]
    mean, components = fit_projection(features, 2)
    np.testing.assert_allclose(np.abs(components) @ np.abs(components).T, np.eye(2), atol=0.05)
    assert np.argmax(np.abs(components[0])) == 0 and np.argmax(np.abs(components[1])) == 1
    assert fit_projection(features, 100)[1].shape == (6, 6)


def test_image_statistics_measure_what_they_say():
    rng = np.random.default_rng(11)
    flat = np.full((1, 16, 16, 3), 128, dtype=np.uint8)
    noisy = np.clip(128 + rng.normal(0, 40, (1, 16, 16, 3)), 0, 255).astype(np.uint8)
    red = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    red[..., 0] = 200
    stats = image_statistics(np.concatenate([flat, noisy, red]))
    assert stats.shape == (3, len(IMAGE_STATISTICS)) and stats.dtype == np.float32
    brightness, contrast, saturation, sharpness = stats.T
    assert brightness[0] == pytest.approx(128 / 255, abs=1e-3)
    assert contrast[0] == pytest.approx(0, abs=1e-6) and contrast[1] > 0.05
    assert saturation[2] == pytest.approx(1.0) and saturation[0] == pytest.approx(0.0)
    assert sharpness[1] > 100 * max(sharpness[0], 1e-9)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        image_statistics(np.zeros((2, 8, 8), dtype=np.uint8))


def test_a_profile_keeps_the_engine_and_precision_that_summarised_it(profile, tmp_path):
    int8 = replace(profile, engine="openvino", precision="int8")
    loaded = ReferenceProfile.load(int8.save(tmp_path / "int8"))
    assert (loaded.engine, loaded.precision) == ("openvino", "int8")
    assert loaded.with_version("7").precision == "int8"
    meta = json.loads((tmp_path / "int8" / "profile.json").read_text())
    del meta["engine"], meta["precision"]  # a profile saved before they were recorded
    (tmp_path / "int8" / "profile.json").write_text(json.dumps(meta))
    older = ReferenceProfile.load(tmp_path / "int8")
    assert (older.engine, older.precision) == ("tensorflow", "fp32")


@pytest.mark.parametrize("rows", [40, 400])  # fewer and more rows than dimensions
def test_the_projection_is_the_leading_principal_axes(rows):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(rows, 64)) * np.linspace(5, 0.1, 64)
    mean, components = fit_projection(features, 8)
    _, _, reference = np.linalg.svd(features - features.mean(axis=0), full_matrices=False)
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(np.abs(components), np.abs(reference[:8]), atol=1e-4)
