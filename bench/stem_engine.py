"""Benchmark: the feature cache's frozen parts on Keras vs the fast engines, one run, one
machine, back to back under the same load. For each engine: embedding images/s (conversion
included), the largest absolute and relative difference of the features from Keras's, and
the validation accuracy of the head solved on those features (L-BFGS, as rung 0 does): the
measurement behind the tolerance in tests/model/test_stem_engine.py (which also checks that
two runs on one engine give bit-identical features).

    python bench/stem_engine.py --data data/ingested --train 2000 --validation 1000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from image_finetune.config import Params
from image_finetune.data.canonical import load_split
from image_finetune.engines import FAST_ENGINES, engine_available
from image_finetune.training.features import rung_features
from image_finetune.training.head_solver import SOLVER_STRENGTHS
from image_finetune.training.model import build_backbone, build_classifier

WEIGHTS = (
    Path(os.environ.get("IMAGE_FINETUNE_SHARED", "../shared"))
    / "weights"
    / ("mobilenet_v2_1.0_imagenet_no_top.weights.h5")
)


def embed(classifier, engine: str, train, validation, boundary: str) -> tuple[dict, float]:
    """(features by name, seconds) of a head rung: the stem's, then the pooled ones."""
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        rung_features(classifier, "tail", boundary, False, train, validation, Path(cache), engine)
        pooled = rung_features(
            classifier, "head", boundary, False, train, validation, Path(cache), engine
        )
        seconds = time.perf_counter() - start
        stem = {name: np.load(Path(cache) / f"{name}.npy") for name in ("train", "validation")}
    return {
        "stem": stem["train"],
        "pooled": np.asarray(pooled[0]),
        "pooled_validation": np.asarray(pooled[2]),
    }, seconds


def head_accuracy(features: dict, y_train, y_validation) -> float:
    """Validation accuracy of the softmax head solved on pooled features (rung 0's solver)."""
    from sklearn.linear_model import LogisticRegression

    fits = [
        LogisticRegression(C=c, max_iter=2000).fit(features["pooled"], y_train)
        for c in SOLVER_STRENGTHS
    ]
    return max(fit.score(features["pooled_validation"], y_validation) for fit in fits)


def sample(split, count: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of ``count`` rows (the splits are stored class by class)."""
    rows = np.sort(
        np.random.default_rng(0).choice(
            len(split.labels), min(count, len(split.labels)), replace=False
        )
    )
    return np.asarray(split.images[rows]), np.asarray(split.labels[rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/ingested"))
    parser.add_argument("--train", type=int, default=2000, help="training images used")
    parser.add_argument("--validation", type=int, default=1000, help="validation images used")
    args = parser.parse_args()
    params = Params()
    boundary = params.train.cache_boundary
    train, validation = load_split(args.data, "train"), load_split(args.data, "validation")
    x_train, y_train = sample(train, args.train)
    x_val, y_val = sample(validation, args.validation)
    model = params.model.model_copy(update={"weights": str(WEIGHTS)})
    classifier = build_classifier(
        build_backbone(model, model.image_size, WEIGHTS), 10, model, int(x_train.shape[1])
    )
    images = 2 * (len(x_train) + len(x_val))  # stem and pool part each see every image
    print(
        f"{len(x_train)} train + {len(x_val)} validation images, {params.model.backbone} "
        f"{model.image_size}px, cache boundary {boundary}; load {os.getloadavg()[0]:.1f}"
    )
    reference, seconds = embed(classifier, "tensorflow", x_train, x_val, boundary)
    print(
        f"{'tensorflow':<12} {images / seconds:7.0f} images/s (parts)  head validation "
        f"{head_accuracy(reference, y_train, y_val):.4f}"
    )
    for engine in [e for e in FAST_ENGINES if engine_available(e)]:
        first, seconds = embed(classifier, engine, x_train, x_val, boundary)
        for name in ("stem", "pooled"):
            difference = np.abs(first[name] - reference[name])
            print(
                f"{engine:<12} {name:<6} max abs {difference.max():.3g}, max relative "
                f"{difference.max() / np.abs(reference[name]).max():.3g} (of the largest), "
                f"mean abs {difference.mean():.3g}"
            )
        print(
            f"{engine:<12} {images / seconds:7.0f} images/s (parts, conversion included)  "
            f"head validation {head_accuracy(first, y_train, y_val):.4f}"
        )


if __name__ == "__main__":
    main()
