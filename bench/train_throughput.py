"""Benchmark: training images/s per backbone, resolution and mode, and the speedup of
training on cached features over end-to-end training.

Modes: ``end_to_end`` (the whole classifier on uint8 images, backbone partly trainable),
``tail`` (the same trainable layers fed from activations cached at the freeze boundary),
``head`` (head only, on pooled features). Random weights where no file is given: the
figures are speeds, not accuracies.
Usage: python bench/train_throughput.py [--steps 6] [--batch 64]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from image_finetune.config import ModelParams  # noqa: E402
from image_finetune.training.features import split_backbone  # noqa: E402
from image_finetune.training.model import (  # noqa: E402
    build_backbone,
    build_classifier,
    set_trainable,
)

# (backbone, resolution, first trainable layer, cache boundary)
CASES = [
    ("mobilenet_v2", 96, "block_13_expand", "block_12_add"),
    ("mobilenet_v2", 128, "block_13_expand", "block_12_add"),
    ("resnet50", 96, "conv5_block1_1_conv", "conv4_block6_out"),
    ("efficientnet_b0", 96, "block6a_expand_conv", "block5c_add"),
]


def images_per_second(
    model: keras.Model, x: np.ndarray, y: np.ndarray, batch: int, steps: int
) -> float:
    model.compile(keras.optimizers.AdamW(1e-4), "categorical_crossentropy")
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)  # trace, warm up
    start = time.perf_counter()
    model.fit(x[: batch * steps], y[: batch * steps], batch_size=batch, epochs=1, verbose=0)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    n = args.batch * args.steps
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, n)]
    print(f"backend {keras.config.backend()}, batch {args.batch}, {args.steps} timed steps")
    print(
        f"{'backbone':<16}{'px':>5}{'end_to_end':>12}{'tail':>10}{'head':>10}"
        f"{'tail speedup':>14}   (images/s)"
    )
    for name, size, unfreeze, boundary in CASES:
        params = ModelParams(backbone=name, weights="none", image_size=size)
        classifier = build_classifier(build_backbone(params, size, None), 10, params, 32)
        backbone = classifier.backbone
        set_trainable(backbone, unfreeze)
        e2e = images_per_second(classifier.model, images, labels, args.batch, args.steps)
        stem, tail = split_backbone(backbone, boundary)
        cache_input = keras.Input(tail.input_shape[1:])
        tail_model = keras.Model(cache_input, classifier.head(tail(cache_input)))
        features = rng.normal(size=(n, *tail.input_shape[1:])).astype("float32")
        tail_speed = images_per_second(tail_model, features, labels, args.batch, args.steps)
        pooled_input = keras.Input((backbone.output_shape[-1],))
        head_model = keras.Model(pooled_input, classifier.softmax(classifier.dropout(pooled_input)))
        pooled = rng.normal(size=(n, backbone.output_shape[-1])).astype("float32")
        head_speed = images_per_second(head_model, pooled, labels, args.batch, args.steps)
        print(
            f"{name:<16}{size:>5}{e2e:>12.0f}{tail_speed:>10.0f}{head_speed:>10.0f}"
            f"{tail_speed / e2e:>13.1f}x"
        )


if __name__ == "__main__":
    main()
