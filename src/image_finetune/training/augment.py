"""The augmentation policy: Keras preprocessing layers that live inside the
training model (so they run on the accelerator), and a preview of them."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
from keras import layers

from image_finetune.config import AugmentParams


def build_augmentation(params: AugmentParams, seed: int) -> keras.Sequential | None:
    """The policy as a Sequential of random layers (active only in training), or None."""
    policy: list[keras.Layer] = []
    if params.horizontal_flip:
        policy.append(layers.RandomFlip("horizontal", seed=seed, name="flip"))
    if params.translate > 0:
        # Translation with reflected borders is pad-and-crop; a random crop to the
        # image's own size would do nothing at all.
        policy.append(
            layers.RandomTranslation(
                params.translate,
                params.translate,
                fill_mode="reflect",
                seed=seed + 1,
                name="translate",
            )
        )
    if params.rotation > 0:
        policy.append(
            layers.RandomRotation(
                params.rotation, fill_mode="reflect", seed=seed + 2, name="rotate"
            )
        )
    if params.contrast > 0:
        policy.append(
            layers.RandomContrast(
                params.contrast, value_range=(0, 255), seed=seed + 3, name="contrast"
            )
        )
    if params.rand_augment:
        policy.append(layers.RandAugment(value_range=(0, 255), seed=seed + 4, name="randaugment"))
    if params.random_erasing > 0:
        policy.append(
            layers.RandomErasing(
                factor=params.random_erasing, value_range=(0, 255), seed=seed + 5, name="erasing"
            )
        )
    return keras.Sequential(policy, name="augmentation") if policy else None


def describe_policy(params: AugmentParams) -> dict:
    """The policy as data, with what survives feature caching."""
    return {
        "layers": [
            name
            for name, on in (
                ("horizontal_flip", params.horizontal_flip),
                ("translate", params.translate > 0),
                ("rotation", params.rotation > 0),
                ("contrast", params.contrast > 0),
                ("rand_augment", params.rand_augment),
                ("random_erasing", params.random_erasing > 0),
            )
            if on
        ],
        "params": params.model_dump(mode="json"),
        "with_cached_features": "only horizontal flips (cached mirrored copies); the full "
        "policy applies to rungs that train end to end on images",
    }


def preview_rows(labels: np.ndarray, count: int) -> np.ndarray:
    """The rows of ``count`` images to preview, sorted: the first image of each class in
    turn, then the second, ...; a class that runs out is passed over, so classes of any
    sizes fill the preview."""
    labels = np.asarray(labels)
    rank = np.empty(labels.size, dtype=np.int64)  # each image's place within its class
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(members.size)
    in_turn = np.lexsort((labels, rank))  # by place in class, then by class
    return np.sort(in_turn[:count])


def write_preview(params: AugmentParams, images: np.ndarray, out_dir: Path, seed: int) -> Path:
    """Write ``policy.json`` and ``preview.png``: originals on the left, augmented copies right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "policy.json").write_text(json.dumps(describe_policy(params), indent=2) + "\n")
    count = min(params.preview_images, len(images))
    originals = np.asarray(images[:count])
    augmentation = build_augmentation(params, seed)
    variants = 4
    columns = [originals]
    for _ in range(variants):
        batch = originals.astype("float32")
        if augmentation is not None:
            batch = keras.ops.convert_to_numpy(augmentation(batch, training=True))
        columns.append(np.clip(batch, 0, 255).astype("uint8"))
    figure, axes = plt.subplots(count, variants + 1, figsize=(1.4 * (variants + 1), 1.4 * count))
    axes = np.atleast_2d(axes)
    for row in range(count):
        for col, batch in enumerate(columns):
            axes[row, col].imshow(batch[row], interpolation="nearest")
            axes[row, col].axis("off")
    axes[0, 0].set_title("original", fontsize=8)
    for col in range(1, variants + 1):
        axes[0, col].set_title(f"augmented {col}", fontsize=8)
    figure.tight_layout()
    path = out_dir / "preview.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
