"""Benchmark: how often the window tests (image_finetune.monitoring.drift) find drift in
500-image windows: clean real CIFAR-10 test images (false alarms), five CIFAR-10-C
corruptions at severities 3 and 5 (bench/corruptions.py) and label shift (half of each
window from one class). Prints the detection rate per condition and which tests fired.

The model: a frozen ImageNet MobileNetV2 at the default image size (96 px, the project's
build_classifier), its softmax head fitted on the pooled features of real training images
(multinomial logistic regression, L-BFGS), as rung 0 fits a frozen backbone's head. The
reference profile is built as the profile step builds it: validation images held out of
train, PCA fitted on the training features. Every image set is embedded once; windows are
sampled from it (without replacement within a window).

Usage: nice python bench/drift_power.py [--windows 100 --clean-windows 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corruptions import CORRUPTIONS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMAGE_FINETUNE_SHARED", ROOT.parent / "shared"))
TARBALL = SHARED / "data" / "cifar10-jpeg.tar.gz"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_imagenet_no_top.weights.h5"


def read_cifar(tarball: Path, per_class: dict[str, int]):
    """The first N real images per class of each split: {split: (images, labels)}, names."""
    found: dict[str, dict[str, list]] = {split: {} for split in per_class}
    with tarfile.open(tarball) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or parts[0] not in per_class:
                continue
            bucket = found[parts[0]].setdefault(parts[1], [])
            if len(bucket) < per_class[parts[0]]:
                bucket.append(np.asarray(Image.open(archive.extractfile(member)).convert("RGB")))
    names = sorted(found["train"])
    splits = {}
    for split, classes in found.items():
        images = [image for name in names for image in classes[name]]
        labels = [index for index, name in enumerate(names) for _ in classes[name]]
        splits[split] = (np.stack(images), np.asarray(labels))
    return splits, names


def frozen_classifier(weights: Path, classes: int):
    from image_finetune.config import ModelParams
    from image_finetune.training.model import build_backbone, build_classifier

    params = ModelParams(backbone="mobilenet_v2", weights=str(weights))
    backbone = build_backbone(params, params.image_size, weights)
    return build_classifier(backbone, classes, params, 32)


def fit_head(classifier, features: np.ndarray, labels: np.ndarray) -> None:
    """The softmax head fitted on pooled features, its weights put in the classifier."""
    from sklearn.linear_model import LogisticRegression

    solver = LogisticRegression(C=0.5, max_iter=1000).fit(features, labels)
    dense = classifier.softmax
    dense.set_weights([solver.coef_.T.astype(np.float32), solver.intercept_.astype(np.float32)])


def softmax_head(classifier, pooled: np.ndarray) -> np.ndarray:
    """The head's probabilities from pooled features (what the classifier outputs)."""
    kernel, bias = classifier.softmax.get_weights()
    logits = pooled @ kernel + bias
    logits -= logits.max(axis=1, keepdims=True)
    return (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)


def pooled_features(model, images: np.ndarray, label: str) -> np.ndarray:
    from image_finetune.monitoring.summaries import summarise

    start = time.perf_counter()
    _, pooled = summarise(model, images, 128)
    print(
        f"  embedded {label}: {len(images)} images in {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return pooled


class Summaries:
    """An embedded image set: probabilities, projected embedding, statistics, labels."""

    def __init__(self, classifier, model, profile, images, labels, label: str):
        from image_finetune.monitoring.summaries import image_statistics

        pooled = pooled_features(model, images, label)
        self.probabilities = softmax_head(classifier, pooled)
        self.projected = profile.project(pooled)
        self.stats = image_statistics(images)
        self.labels = labels

    def window(self, rows: np.ndarray):
        from image_finetune.monitoring.drift import Window

        return Window(self.probabilities[rows], self.projected[rows], self.stats[rows])

    def accuracy(self) -> float:
        return float((self.probabilities.argmax(1) == self.labels).mean())


def detection(profile, windows, args) -> tuple[float, dict[str, float]]:
    """The share of windows found drifting, and each test's share."""
    from image_finetune.monitoring.drift import TESTS, test_window

    results = [
        test_window(profile, window, args.alpha, args.permutations, seed)
        for seed, window in enumerate(windows)
    ]
    fired = {name: float(np.mean([r.tests[name].drift for r in results])) for name in TESTS}
    return float(np.mean([r.drift for r in results])), fired


def random_windows(data: Summaries, count: int, size: int, rng):
    for _ in range(count):
        yield data.window(rng.choice(len(data.labels), size, replace=False))


def label_shift_windows(data: Summaries, count: int, size: int, rng):
    """Half of each window from one class (cycling through the classes), half from all."""
    classes = int(data.labels.max()) + 1
    for index in range(count):
        own = np.flatnonzero(data.labels == index % classes)
        half = rng.choice(own, size // 2, replace=len(own) < size // 2)
        rest = rng.choice(len(data.labels), size - size // 2, replace=False)
        yield data.window(np.concatenate([half, rest]))


def row(label: str, severity: str, power: float, fired: dict, accuracy: float, target: str):
    tests = ", ".join(f"{k} {v:.2f}" for k, v in fired.items() if v >= 0.05) or "-"
    print(
        f"{label:<18} {severity:>8} {power:>6.3f} {accuracy:>9.3f} {target:>8}  {tests}", flush=True
    )


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--validation-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=500)
    parser.add_argument("--corrupted-images", type=int, default=2000)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--windows", type=int, default=100)
    parser.add_argument("--clean-windows", type=int, default=200)
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def build(args):
    """The model, the reference profile, and the clean test set's summaries."""
    from image_finetune.monitoring.profile import build_profile
    from image_finetune.monitoring.summaries import embedding_model, image_statistics

    per_class = {
        "train": args.train_per_class + args.validation_per_class,
        "test": args.test_per_class,
    }
    splits, names = read_cifar(TARBALL, per_class)
    images, labels = splits["train"]
    held = np.zeros(len(labels), bool)
    for index in range(len(names)):
        held[np.flatnonzero(labels == index)[: args.validation_per_class]] = True
    classifier = frozen_classifier(WEIGHTS, len(names))
    model = embedding_model(classifier.model)
    train_pooled = pooled_features(model, images[~held], "train")
    fit_head(classifier, train_pooled, labels[~held])
    val_pooled = pooled_features(model, images[held], "validation")
    check = np.asarray(model.predict_on_batch(images[held][:8])[0])
    assert np.allclose(check, softmax_head(classifier, val_pooled[:8]), atol=1e-4)
    profile = build_profile(
        names,
        softmax_head(classifier, val_pooled),
        val_pooled,
        image_statistics(images[held]),
        train_pooled,
    )
    clean = Summaries(classifier, model, profile, *splits["test"], "clean test")
    validation_accuracy = float((profile.probabilities.argmax(1) == labels[held]).mean())
    return classifier, model, profile, clean, splits["test"], validation_accuracy


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    classifier, model, profile, clean, (test_images, test_labels), val_acc = build(args)
    print(
        f"model: frozen MobileNetV2 96 px + logistic head on {10 * args.train_per_class} "
        f"train images; validation accuracy {val_acc:.3f}; reference {len(profile)} "
        f"validation images, PCA {profile.dimensions} on train features; windows of "
        f"{args.window}, alpha {args.alpha}, {args.permutations} MMD permutations"
    )
    print(
        f"{'condition':<18} {'severity':>8} {'drift':>6} {'accuracy':>9} {'target':>8}  "
        "tests that fired (share of windows)"
    )
    far, fired = detection(
        profile, random_windows(clean, args.clean_windows, args.window, rng), args
    )
    row(f"clean x{args.clean_windows}", "-", far, fired, clean.accuracy(), "<=0.05")
    power, fired = detection(
        profile, label_shift_windows(clean, args.windows, args.window, rng), args
    )
    row("label shift", "half", power, fired, clean.accuracy(), ">=0.90")
    subset = rng.choice(len(test_labels), args.corrupted_images, replace=False)
    for name, corrupt in CORRUPTIONS.items():
        for severity, target in ((3, ">=0.90"), (5, ">=0.99")):
            images = corrupt(test_images[subset], severity, np.random.default_rng(severity))
            data = Summaries(
                classifier, model, profile, images, test_labels[subset], f"{name} {severity}"
            )
            power, fired = detection(
                profile, random_windows(data, args.windows, args.window, rng), args
            )
            row(name, str(severity), power, fired, data.accuracy(), target)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
