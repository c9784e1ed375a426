"""Tables of facts that the validation suites run over, made in one pass over the pixels
(:func:`dataset_facts`), a chunk of rows at a time: memory holds a chunk, not a split.

- image facts: one row per image (label, shape, dtype, min/max/mean/std,
  content hash, and whether the hash also occurs across the test boundary).
- ``class_counts``: one row per (split, class), with the manifest's count.
- channel stats: one row per (split, channel), pixel mean and std in [0, 1].
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from image_finetune.data.canonical import SPLITS, load_split, read_manifest, read_sources
from image_finetune.data.rows import iter_chunks
from image_finetune.data.stable_split import BY_CONTENT

CHANNELS = ("red", "green", "blue")
# Rows read at a time. Fixed, not sized by memory: the channel sums' rounding depends on it,
# and the committed reports were made with it.
FACT_CHUNK_ROWS = 4096


def dataset_facts(
    data_dir: Path, chunk_rows: int = FACT_CHUNK_ROWS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-image facts, per (split, channel) pixel mean and std in [0, 1]) over every
    split of a canonical dataset, in one pass over its pixels, ``chunk_rows`` at a time."""
    frames, channel_rows = [], []
    for split in _present_splits(data_dir):
        loaded = load_split(data_dir, split)
        frame, channels = _scan_split(
            split, loaded.images, loaded.labels, read_sources(data_dir, split), chunk_rows
        )
        frames.append(frame)
        channel_rows += channels
    facts = pd.concat(frames, ignore_index=True)
    is_test = facts["split"] == "test"
    test_hashes = set(facts.loc[is_test, "sha256"])
    fit_hashes = set(facts.loc[~is_test, "sha256"])
    facts["crosses_test_boundary"] = np.where(
        is_test, facts["sha256"].isin(fit_hashes), facts["sha256"].isin(test_hashes)
    )
    return facts, pd.DataFrame(channel_rows, columns=["split", "channel", "mean", "std"])


def _scan_split(
    name: str, images, labels, sources: list[str] | None, chunk_rows: int
) -> tuple[pd.DataFrame, list[dict]]:
    n = images.shape[0]
    shape = images.shape[1:] if images.ndim == 4 else (*images.shape[1:], 1)
    stats = {key: np.empty(n, dtype=np.float64) for key in ("min", "max", "mean", "std")}
    hashes: list[str] = []
    # Channel moments only of RGB images: the per-image shape expectations report the rest.
    moments = ChannelMoments() if images.ndim == 4 and images.shape[-1] == 3 else None
    for start, chunk in zip(range(0, n, chunk_rows), iter_chunks(images, chunk_rows), strict=True):
        for key, values in _pixel_stats(chunk).items():
            stats[key][start : start + chunk.shape[0]] = values
        hashes += [
            hashlib.sha256(np.ascontiguousarray(image).data).hexdigest()[:32] for image in chunk
        ]
        if moments is not None:
            moments.add(chunk)
    frame = pd.DataFrame(
        {
            "image_id": sources or [f"{name}/{i}" for i in range(n)],
            "split": name,
            "label": np.asarray(labels, dtype=np.int64),
            "height": shape[0],
            "width": shape[1],
            "channels": shape[2] if len(shape) > 2 else 1,
            "dtype": str(images.dtype),
            **stats,
            "sha256": hashes,
        }
    )
    return frame, moments.rows(name) if moments is not None else []


def _pixel_stats(chunk: np.ndarray) -> dict[str, np.ndarray]:
    """Each image's min, max, mean and std over all its pixel values."""
    block = chunk.reshape(chunk.shape[0], -1).astype(np.float32)
    return {
        "min": block.min(axis=1),
        "max": block.max(axis=1),
        "mean": block.mean(axis=1),
        "std": block.std(axis=1),
    }


class ChannelMoments:
    """Per-channel pixel value moments (values scaled to [0, 1]), accumulated chunk by chunk:
    uint8 images as a histogram per channel (exact, and ten times faster than summing a float
    copy), other dtypes as running float sums."""

    def __init__(self) -> None:
        self.histogram = np.zeros((3, 256), dtype=np.int64)
        self.total, self.squares, self.count = np.zeros(3), np.zeros(3), 0

    def add(self, chunk: np.ndarray) -> None:
        if chunk.dtype == np.uint8:
            for channel in range(3):
                self.histogram[channel] += np.bincount(chunk[..., channel].ravel(), minlength=256)
            return
        pixels = np.asarray(chunk, dtype=np.float64)
        pixels /= 255.0
        self.total += pixels.sum(axis=(0, 1, 2))
        np.square(pixels, out=pixels)  # in place: one float copy of the chunk at a time
        self.squares += pixels.sum(axis=(0, 1, 2))
        self.count += pixels.shape[0] * pixels.shape[1] * pixels.shape[2]

    def rows(self, split: str) -> list[dict]:
        levels = np.arange(256) / 255.0
        count = self.count + int(self.histogram[0].sum())
        mean = (self.total + self.histogram @ levels) / max(count, 1)
        squares = (self.squares + self.histogram @ levels**2) / max(count, 1)
        std = np.sqrt(np.maximum(squares - mean**2, 0.0))
        return [
            {"split": split, "channel": channel, "mean": m, "std": s}
            for channel, m, s in zip(CHANNELS, mean, std, strict=True)
        ]


def class_counts(facts: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    """Per (split, class) counts from the data beside the manifest's, with balance ratios:
    of the split's counts, or of the whole dataset's where the splits were made by content
    (their class counts vary binomially by design: data.stable_split)."""
    class_names = manifest["class_names"]
    whole = facts["label"].value_counts()
    rows = []
    for split in facts["split"].unique():
        labels = facts.loc[facts["split"] == split, "label"]
        observed = labels.value_counts()
        expected = manifest["splits"].get(split, {}).get("per_class", {})
        counts = [int(observed.get(i, 0)) for i in range(len(class_names))]
        balanced = (
            [int(whole.get(i, 0)) for i in range(len(class_names))]
            if manifest.get("test_holdout") == BY_CONTENT
            else counts
        )
        mean = max(float(np.mean(balanced)), 1e-9)
        for index, name in enumerate(class_names):
            rows.append(
                {
                    "split": split,
                    "class_index": index,
                    "class_name": name,
                    "count": counts[index],
                    "manifest_count": int(expected.get(name, -1)),
                    "balance_ratio": balanced[index] / mean,
                }
            )
    return pd.DataFrame(rows)


def _present_splits(data_dir: Path) -> list[str]:
    manifest = read_manifest(data_dir)
    return [s for s in SPLITS if s in manifest["splits"]]
