"""Is a window of live summaries drawn from the reference's distribution? Eight tests, each
a family with its own p-value, combined by Bonferroni so that the overall false-alarm rate
stays at ``alpha`` (black-box shift detection, Rabanser et al. 2019):

- ``class_probabilities``: a two-sample KS test per class probability, Bonferroni over classes;
- ``embedding_mmd``: an MMD permutation test on the projected embedding (RBF kernel, median
  heuristic bandwidth);
- ``predicted_classes``: a chi-square test of the predicted-class counts (rare classes pooled);
- ``brightness``, ``contrast``, ``saturation``, ``sharpness``: a KS test per image statistic;
- ``confidence``: a one-sided Welch t-test for a drop in mean top-class probability.

Each test's ``p_value`` is Bonferroni-adjusted over the eight (``raw_p_value`` is not), so a
test says ``drift`` when its p_value < alpha and the window drifts when any test does."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from image_finetune.monitoring.profile import ReferenceProfile
from image_finetune.monitoring.summaries import IMAGE_STATISTICS

TESTS = (
    "class_probabilities",
    "embedding_mmd",
    "predicted_classes",
    *IMAGE_STATISTICS,
    "confidence",
)
MIN_WINDOW = 20  # fewer images say little and make every test unstable
MMD_REFERENCE = 1000  # reference images the MMD compares with (a seeded sample)
MMD_WINDOW = 1000  # window images it compares (a seeded sample of a larger window)
MAX_PERMUTATIONS = 2000
MIN_EXPECTED = 5.0  # chi-square: classes expected fewer times than this are pooled


@dataclass(frozen=True)
class TestResult:
    """One test's statistic, its family-adjusted p-value and verdict."""

    __test__ = False  # not a pytest class

    statistic: float
    p_value: float
    drift: bool
    raw_p_value: float


@dataclass(frozen=True)
class DriftResult:
    """Every test's result and the overall verdict."""

    tests: dict[str, TestResult]
    drift: bool
    alpha: float
    window_size: int
    reference_size: int
    model_version: str | None = None
    details: dict = field(default_factory=dict)  # what the report draws (means, counts)

    def to_dict(self) -> dict:
        """JSON-ready: verdicts, statistics and p-values by test name."""
        return {
            "drift": self.drift,
            "alpha": self.alpha,
            "model_version": self.model_version,
            "window_size": self.window_size,
            "reference_size": self.reference_size,
            "tests": {
                name: {
                    k: (bool(v) if k == "drift" else float(v)) for k, v in asdict(result).items()
                }
                for name, result in self.tests.items()
            },
            "details": self.details,
        }


class Window:
    """Summaries of the images seen since the window began: append as they come."""

    def __init__(self, probabilities: np.ndarray, projected: np.ndarray, image_stats: np.ndarray):
        probabilities, projected, image_stats = (
            np.asarray(a, dtype=np.float32) for a in (probabilities, projected, image_stats)
        )
        if not (probabilities.ndim == projected.ndim == image_stats.ndim == 2):
            raise ValueError("window arrays must be 2-D [N, width]")
        if not len(probabilities) == len(projected) == len(image_stats):
            raise ValueError(
                f"window arrays disagree on the number of images: "
                f"{len(probabilities)}, {len(projected)}, {len(image_stats)}"
            )
        if image_stats.shape[1] != len(IMAGE_STATISTICS):
            raise ValueError(
                f"image_stats needs {len(IMAGE_STATISTICS)} columns "
                f"{IMAGE_STATISTICS}, got {image_stats.shape[1]}"
            )
        self._chunks = [(probabilities, projected, image_stats)]
        self._widths = (probabilities.shape[1], projected.shape[1])
        self._count = len(probabilities)  # kept, not summed: len() runs once per answer

    @classmethod
    def empty(cls, dimensions: int, classes: int) -> Window:
        """A window with no images yet, for ``classes`` and a k = ``dimensions`` projection."""
        return cls(
            np.empty((0, classes)), np.empty((0, dimensions)), np.empty((0, len(IMAGE_STATISTICS)))
        )

    def append(
        self, probabilities: np.ndarray, projected: np.ndarray, image_stats: np.ndarray
    ) -> None:
        """Add the summaries of one image ([C], [k], [4]) or of a batch ([N, ...])."""
        batch = Window(
            np.atleast_2d(probabilities), np.atleast_2d(projected), np.atleast_2d(image_stats)
        )
        if batch._widths != self._widths:
            raise ValueError(
                f"summaries of widths {batch._widths} do not fit a window of "
                f"{self._widths} (classes, dimensions)"
            )
        self._chunks.append(batch._chunks[0])
        self._count += batch._count

    def __len__(self) -> int:
        return self._count

    def _column(self, index: int) -> np.ndarray:
        if len(self._chunks) > 1:  # join once, then keep the joined arrays
            probabilities, projected, stats = (
                np.concatenate([c[i] for c in self._chunks]) for i in range(3)
            )
            self._chunks = [(probabilities, projected, stats)]
        return self._chunks[0][index]

    @property
    def probabilities(self) -> np.ndarray:
        return self._column(0)

    @property
    def projected(self) -> np.ndarray:
        return self._column(1)

    @property
    def image_stats(self) -> np.ndarray:
        return self._column(2)

    def arrays(self) -> dict[str, np.ndarray]:
        """The recorded-window format: ``probabilities``, ``projected``, ``image_stats``."""
        return {
            "probabilities": self.probabilities,
            "projected": self.projected,
            "image_stats": self.image_stats,
        }


def test_window(
    profile: ReferenceProfile,
    window: Window,
    alpha: float = 0.05,
    permutations: int = 500,
    seed: int = 0,
) -> DriftResult:
    """Test ``window`` against ``profile``: every test, Bonferroni over the eight."""
    _check_fits(profile, window, alpha, permutations)
    rng = np.random.default_rng(seed)
    raw = {
        "class_probabilities": ks_family(profile.probabilities, window.probabilities),
        "embedding_mmd": mmd_test(profile.projected, window.projected, permutations, rng),
        "predicted_classes": predicted_class_test(profile.probabilities, window.probabilities),
        **{
            name: ks_test(profile.image_stats[:, i], window.image_stats[:, i])
            for i, name in enumerate(IMAGE_STATISTICS)
        },
        "confidence": confidence_drop_test(profile.probabilities, window.probabilities),
    }
    tests = {}
    for name in TESTS:
        statistic, p_value = raw[name]
        adjusted = min(1.0, p_value * len(TESTS))
        tests[name] = TestResult(float(statistic), adjusted, adjusted < alpha, float(p_value))
    return DriftResult(
        tests,
        any(t.drift for t in tests.values()),
        alpha,
        len(window),
        len(profile),
        profile.model_version,
        describe(profile, window),
    )


vars(test_window)["__test__"] = False  # a domain function, not a pytest test


def _check_fits(profile: ReferenceProfile, window: Window, alpha: float, permutations: int):
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), not {alpha}")
    if not 1 <= permutations <= MAX_PERMUTATIONS:
        raise ValueError(f"permutations must lie in 1..{MAX_PERMUTATIONS}, not {permutations}")
    needed = min_permutations(alpha)
    if permutations < needed:  # the MMD test could never reach its share of alpha
        raise ValueError(
            f"{permutations} permutations cannot give the MMD test a p-value "
            f"below alpha/{len(TESTS)}: use {needed} at least"
        )
    if len(window) < MIN_WINDOW:
        raise ValueError(
            f"a window needs {MIN_WINDOW} images at least to be tested, has {len(window)}"
        )
    classes, dimensions = window.probabilities.shape[1], window.projected.shape[1]
    if classes != len(profile.class_names) or dimensions != profile.dimensions:
        raise ValueError(
            f"the window's summaries ({classes} classes, {dimensions} dimensions)"
            f" do not fit the profile ({len(profile.class_names)} classes, "
            f"{profile.dimensions} dimensions)"
        )


def min_permutations(alpha: float) -> int:
    """The fewest permutations whose smallest p-value, 1/(P+1), is below alpha/len(TESTS)."""
    return int(np.floor(len(TESTS) / alpha))


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: (D, p)."""
    from scipy import stats  # here: the server imports this module, only its tester tests

    result = stats.ks_2samp(reference, current)
    return float(result.statistic), float(result.pvalue)


def ks_family(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """A KS test per column, Bonferroni over the columns: (largest D, adjusted smallest p)."""
    results = [ks_test(reference[:, c], current[:, c]) for c in range(reference.shape[1])]
    statistic = max(r[0] for r in results)
    return statistic, min(1.0, min(r[1] for r in results) * len(results))


def mmd_of_assignments(kernel: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Biased MMD^2 for each assignment in ``weights`` [n, P] (+1/m for a point of the first
    sample, -1/(n-m) for the second), all at once: sum_ij a_i K_ij a_j per column."""
    return np.einsum("ip,ip->p", weights, kernel @ weights)


def mmd_test(
    reference: np.ndarray, current: np.ndarray, permutations: int, rng: np.random.Generator
) -> tuple[float, float]:
    """MMD^2 between the samples with an RBF kernel (bandwidth: the median pairwise distance)
    and its permutation p-value, (1 + #{permuted >= observed}) / (1 + permutations). Large
    samples are subsampled (seeded) so the kernel matrix stays bounded."""
    reference = _subsample(reference, MMD_REFERENCE, rng)
    current = _subsample(current, MMD_WINDOW, rng)
    pooled = np.concatenate([reference, current]).astype(np.float64)
    squared = np.maximum(_squared_distances(pooled), 0.0)
    upper = squared[np.triu_indices(len(pooled), k=1)]
    bandwidth = np.median(upper[upper > 0]) if np.any(upper > 0) else 1.0
    kernel = np.exp(-squared / bandwidth)  # exp(-d^2 / (2 sigma^2)), sigma^2 = median(d^2)/2
    m, n = len(reference), len(pooled)
    weights = np.where(np.arange(n) < m, 1.0 / m, -1.0 / (n - m))
    shuffled = np.stack([rng.permutation(weights) for _ in range(permutations)], axis=1)
    observed = float(weights @ kernel @ weights)
    null = mmd_of_assignments(kernel, shuffled)
    p_value = (1.0 + np.count_nonzero(null >= observed - 1e-12)) / (1.0 + permutations)
    return observed, float(p_value)


def _squared_distances(points: np.ndarray) -> np.ndarray:
    norms = np.einsum("ij,ij->i", points, points)
    return norms[:, None] + norms[None, :] - 2.0 * points @ points.T


def _subsample(values: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if len(values) <= limit:
        return values
    return values[rng.choice(len(values), limit, replace=False)]


def predicted_class_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity of the predicted-class counts. Classes expected fewer
    than MIN_EXPECTED times in the window are pooled into one bin (and the bin dropped if it
    is still rare); classes neither sample predicts carry no information and are dropped."""
    classes = reference.shape[1]
    ref_counts = np.bincount(reference.argmax(axis=1), minlength=classes)
    cur_counts = np.bincount(current.argmax(axis=1), minlength=classes)
    expected = ref_counts / ref_counts.sum() * cur_counts.sum()
    rare = expected < MIN_EXPECTED
    table = np.stack([ref_counts[~rare], cur_counts[~rare]], axis=1)
    if rare.any():
        pooled = np.array([ref_counts[rare].sum(), cur_counts[rare].sum()])
        if expected[rare].sum() >= MIN_EXPECTED or not len(table):
            table = np.concatenate([table, pooled[None]])
        else:  # still rare: joined to the least predicted class, so it is never ignored
            table[table[:, 0].argmin()] += pooled
    table = table[table.sum(axis=1) > 0]
    if len(table) < 2:
        return 0.0, 1.0
    from scipy import stats

    statistic, p_value, _, _ = stats.chi2_contingency(table.T, correction=False)
    return float(statistic), float(p_value)


def confidence_drop_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """One-sided Welch t-test that the window's mean top-class probability is lower:
    (the drop in mean confidence, p). A rise is never drift by this test."""
    ref_conf, cur_conf = reference.max(axis=1), current.max(axis=1)
    drop = float(ref_conf.mean() - cur_conf.mean())
    if np.std(ref_conf) == 0 and np.std(cur_conf) == 0:
        return drop, 0.0 if drop > 0 else 1.0
    from scipy import stats

    result = stats.ttest_ind(cur_conf, ref_conf, equal_var=False, alternative="less")
    p_value = float(result.pvalue)
    return drop, 1.0 if np.isnan(p_value) else p_value


def describe(profile: ReferenceProfile, window: Window) -> dict:
    """The figures a report shows beside the verdicts: predicted-class counts and means."""
    classes = len(profile.class_names)
    ref_conf, cur_conf = profile.probabilities.max(axis=1), window.probabilities.max(axis=1)
    return {
        "class_names": list(profile.class_names),
        "predicted_classes": {
            "reference": np.bincount(profile.probabilities.argmax(1), minlength=classes).tolist(),
            "window": np.bincount(window.probabilities.argmax(1), minlength=classes).tolist(),
        },
        "mean_confidence": {"reference": float(ref_conf.mean()), "window": float(cur_conf.mean())},
        "image_statistics": {
            name: {
                "reference": float(profile.image_stats[:, i].mean()),
                "window": float(window.image_stats[:, i].mean()),
            }
            for i, name in enumerate(IMAGE_STATISTICS)
        },
    }
