"""Benchmark: the tutorial's own recipe, measured the same way as the default profile.

The recipe this product grew from: MobileNetV2 frozen at CIFAR's native 32x32, inputs
scaled by 1/255 (not the backbone's own preprocessing), a softmax head trained on top,
and the test set used for the decision. Prints embedding speed, wall time and test
accuracy; compare with ``bench/repro.sh``.
Usage: python bench/baseline.py [--data data/ingested] [--weights PATH] [--epochs 10]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from image_finetune.data.canonical import load_split  # noqa: E402
from image_finetune.inference import predict_batches  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "ingested")
    parser.add_argument("--weights", type=Path, default=ROOT.parent / "shared" / "weights" /
                        "mobilenet_v2_1.0_imagenet_no_top.weights.h5")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    keras.utils.set_random_seed(42)
    start = time.perf_counter()
    backbone = keras.applications.MobileNetV2(include_top=False, weights=str(args.weights),
                                              input_shape=(32, 32, 3), pooling="avg")
    backbone.trainable = False
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    features = keras.Model(inputs, backbone(keras.layers.Rescaling(1 / 255)(inputs)))
    train, test = load_split(args.data, "train"), load_split(args.data, "test")
    embed_start = time.perf_counter()
    x_train = predict_batches(features, train.images, 256, "embed train")
    x_test = predict_batches(features, test.images, 256, "embed test")
    embed_seconds = time.perf_counter() - embed_start
    head = keras.Sequential([keras.Input(x_train.shape[1:]), keras.layers.Dropout(0.2),
                             keras.layers.Dense(10, activation="softmax")])
    head.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    head.fit(x_train, np.asarray(train.labels), batch_size=256, epochs=args.epochs, verbose=0)
    accuracy = float((head.predict(x_test, verbose=0).argmax(1) == test.labels).mean())
    total = time.perf_counter() - start
    n = len(train.labels) + len(test.labels)
    print(f"tutorial baseline (MobileNetV2 frozen at 32x32, /255 scaling, linear head, "
          f"{args.epochs} epochs)")
    print(f"  embed {n} images: {embed_seconds:.1f} s ({n / embed_seconds:.0f} images/s)")
    print(f"  wall time {total:.1f} s, test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
