"""Benchmark: three recipes side by side, one run, same machine, same CIFAR-10 data, same
MobileNetV2 ImageNet weights, the same wall budget each. Prints test accuracy and wall time:

(a) the seed tutorial's recipe as written: MobileNetV2 frozen at CIFAR's 32x32, inputs scaled
    by 1/255 (not the backbone's own preprocessing), a softmax head on its features;
(b) the recipe of Keras' own transfer-learning guide at our resolution: augmentation (flip,
    rotation 0.1), the backbone frozen and called with ``training=False``, the head trained
    with Adam; then everything but BatchNorm unfrozen (BN stays in inference mode, as the
    guide means) and fine-tuned at 1e-5. The guide asks for 20 + 10 epochs; within the
    budget the head gets half of it;
(c) our default profile: ``bash bench/repro.sh``, `dvc repro` from nothing in a fresh copy
    (its wall time covers ingest, validation, the loop, evaluation and registration).

(a) and (b) read the canonical arrays of one ingest (timed apart) and run in their own
processes; both stop at the budget (the test evaluation included) and read the test set once.
Usage: python bench/side_by_side.py [--budget 900] [--recipes a b c]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2_1.0_imagenet_no_top.weights.h5"
LABELS = {
    "a": "the tutorial's recipe (frozen, 32x32, /255)",
    "b": "Keras' transfer-learning guide (head, then all layers at 1e-5)",
    "c": "our default profile (`dvc repro` from nothing)",
}
TEST_RESERVE = 0.1  # of the budget, kept back for the test evaluation


class Deadline:
    """Stops fit() (mid-epoch if need be) once the wall clock passes ``at``."""

    def __init__(self, at: float):
        self.at = at

    def left(self) -> float:
        return self.at - time.perf_counter()

    def callback(self):
        import keras

        deadline = self

        class StopAtDeadline(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if deadline.left() <= 0:
                    self.model.stop_training = True

        return StopAtDeadline()


def tutorial_recipe(data: Path, budget: float) -> dict:
    """(a): frozen MobileNetV2 at 32x32 with /255 scaling; a softmax head on its features."""
    import keras
    import numpy as np

    from image_finetune.data.canonical import load_split
    from image_finetune.inference import predict_batches

    deadline = Deadline(time.perf_counter() + budget * (1 - TEST_RESERVE))
    keras.utils.set_random_seed(42)
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=str(WEIGHTS), input_shape=(32, 32, 3), pooling="avg"
    )
    backbone.trainable = False
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    features = keras.Model(inputs, backbone(keras.layers.Rescaling(1 / 255)(inputs)))
    train, test = load_split(data, "train"), load_split(data, "test")
    x_train = predict_batches(features, train.images, 256, "embed train")
    head = keras.Sequential(
        [
            keras.Input(x_train.shape[1:]),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    head.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    head.fit(
        x_train,
        np.asarray(train.labels),
        batch_size=256,
        epochs=10,
        verbose=2,
        callbacks=[deadline.callback()],
    )
    x_test = predict_batches(features, test.images, 256, "embed test")
    return {"accuracy": float((head.predict(x_test, verbose=0).argmax(1) == test.labels).mean())}


def keras_guide_recipe(data: Path, budget: float, image_size: int) -> dict:
    """(b): the Keras guide's two phases, MobileNetV2 at ``image_size``, within the budget."""
    import keras
    import numpy as np
    from keras import layers

    from image_finetune.data.canonical import load_split

    start = time.perf_counter()
    keras.utils.set_random_seed(42)
    train, test = load_split(data, "train", mmap=False), load_split(data, "test")
    augmentation = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.1)])
    base = keras.applications.MobileNetV2(
        include_top=False, weights=str(WEIGHTS), input_shape=(image_size, image_size, 3)
    )
    base.trainable = False
    inputs = keras.Input(train.images.shape[1:], dtype="uint8")
    x = layers.Resizing(image_size, image_size)(augmentation(layers.Rescaling(1.0)(inputs)))
    x = base(layers.Rescaling(1 / 127.5, offset=-1)(x), training=False)
    x = layers.Dropout(0.2)(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, layers.Dense(10, activation="softmax")(x))
    labels = np.asarray(train.labels)
    phases = []
    for name, trainable, rate, epochs, share in (
        ("head", False, 1e-3, 20, 0.5),
        ("fine-tune all", True, 1e-5, 10, 1.0),
    ):
        base.trainable = trainable
        # The guide's `training=False` alone does not keep BatchNorm in inference mode here
        # once the backbone is trainable (Keras 3.15: the training-mode loss of the frozen
        # head jumps from 1.0 to ln 10, and these BN-folded weights collapse to chance):
        # freeze the BN layers, as the guide means.
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False
        model.compile(
            keras.optimizers.Adam(rate), "sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        deadline = Deadline(start + budget * share * (1 - TEST_RESERVE))
        history = model.fit(
            train.images,
            labels,
            batch_size=64,
            epochs=epochs,
            verbose=2,
            callbacks=[deadline.callback()],
        )
        phases.append(
            f"{name}: {len(history.history['loss'])} epochs (last one cut short by the budget)"
            if deadline.left() <= 0
            else f"{name}: {epochs} epochs"
        )
    probabilities = model.predict(test.images, batch_size=256, verbose=0)
    return {"accuracy": float((probabilities.argmax(1) == test.labels).mean()), "phases": phases}


def run_recipe(recipe: str, data: Path, budget: float, image_size: int) -> dict:
    """One recipe in its own process (its own threads and memory); wall time measured here."""
    start = time.perf_counter()
    command = [
        sys.executable,
        __file__,
        "--one",
        recipe,
        "--data",
        str(data),
        "--budget",
        str(budget),
        "--image-size",
        str(image_size),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"recipe {recipe} failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return {**figures, "wall_seconds": round(time.perf_counter() - start, 1)}


def run_profile() -> dict:
    """(c): bench/repro.sh, the default profile from nothing; its own figures parsed."""
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "repro.sh")], capture_output=True, text=True
    )
    print(result.stdout)
    if result.returncode:
        sys.exit(f"bench/repro.sh failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    wall = re.search(r"from nothing: (\d+) s", result.stdout)
    accuracy = re.search(r"test accuracy ([0-9.]+)", result.stdout)
    return {"accuracy": float(accuracy.group(1)), "wall_seconds": float(wall.group(1))}


def ingest(work: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "image_finetune.cli",
            "ingest",
            "--params",
            str(ROOT / "params.yaml"),
            "--out",
            str(work / "data"),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=900.0, help="wall seconds per recipe")
    parser.add_argument("--recipes", nargs="+", choices=sorted(LABELS), default=sorted(LABELS))
    parser.add_argument("--one", choices=("a", "b"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        figures = (
            tutorial_recipe(args.data, args.budget)
            if args.one == "a"
            else keras_guide_recipe(args.data, args.budget, args.image_size)
        )
        print(json.dumps(figures))
        return
    from image_finetune.config import load_params

    image_size = load_params(ROOT / "params.yaml", use_env=False).model.image_size
    rows = {}
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as work:
        if {"a", "b"} & set(args.recipes):
            print(f"ingest (shared by a and b): {ingest(Path(work)):.0f} s", flush=True)
        for recipe in args.recipes:
            print(f"({recipe}) {LABELS[recipe]} ...", flush=True)
            rows[recipe] = (
                run_profile()
                if recipe == "c"
                else run_recipe(recipe, Path(work) / "data", args.budget, image_size)
            )
            print(f"    {rows[recipe]}", flush=True)
    print(
        f"\nwall budget {args.budget:.0f} s per recipe; MobileNetV2 at {image_size} px "
        "for (b) and (c); this machine's CPUs"
    )
    print("\n| recipe | test accuracy | wall time |\n| --- | --- | --- |")
    for recipe, row in rows.items():
        print(
            f"| ({recipe}) {LABELS[recipe]} | {row['accuracy']:.4f} | {row['wall_seconds']:.0f} s |"
        )


if __name__ == "__main__":
    main()
