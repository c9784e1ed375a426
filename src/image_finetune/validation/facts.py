"""Tables of facts that the validation suites run over.

- ``image_facts``: one row per image (label, shape, dtype, min/max/mean/std,
  content hash, and whether the hash also occurs across the test boundary).
- ``class_counts``: one row per (split, class), with the manifest's count.
- ``channel_stats``: one row per (split, channel), pixel mean and std in [0, 1].
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from image_finetune.data.canonical import SPLITS, load_split, read_manifest, read_sources

CHANNELS = ("red", "green", "blue")
_CHUNK = 4096


def _image_hashes(images: np.ndarray) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(image).data).hexdigest()[:32] for image in images]


def _split_facts(name: str, images: np.ndarray, labels: np.ndarray,
                 sources: list[str] | None = None) -> pd.DataFrame:
    n = images.shape[0]
    shape = images.shape[1:] if images.ndim == 4 else (*images.shape[1:], 1)
    mins, maxs, means, stds = (np.empty(n, dtype=np.float64) for _ in range(4))
    for start in range(0, n, _CHUNK):
        block = np.asarray(images[start : start + _CHUNK]).reshape(
            min(_CHUNK, n - start), -1
        ).astype(np.float32)
        stop = start + block.shape[0]
        mins[start:stop] = block.min(axis=1)
        maxs[start:stop] = block.max(axis=1)
        means[start:stop] = block.mean(axis=1)
        stds[start:stop] = block.std(axis=1)
    return pd.DataFrame(
        {
            "image_id": sources or [f"{name}/{i}" for i in range(n)],
            "split": name,
            "label": np.asarray(labels, dtype=np.int64),
            "height": shape[0],
            "width": shape[1],
            "channels": shape[2] if len(shape) > 2 else 1,
            "dtype": str(images.dtype),
            "min": mins,
            "max": maxs,
            "mean": means,
            "std": stds,
            "sha256": _image_hashes(images),
        }
    )


def image_facts(data_dir: Path) -> pd.DataFrame:
    """Per-image facts over every split of a canonical dataset."""
    frames = [_split_facts(s, *_arrays(data_dir, s), read_sources(data_dir, s))
              for s in _present_splits(data_dir)]
    facts = pd.concat(frames, ignore_index=True)
    is_test = facts["split"] == "test"
    test_hashes = set(facts.loc[is_test, "sha256"])
    fit_hashes = set(facts.loc[~is_test, "sha256"])
    facts["crosses_test_boundary"] = np.where(
        is_test, facts["sha256"].isin(fit_hashes), facts["sha256"].isin(test_hashes)
    )
    return facts


def class_counts(facts: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    """Per (split, class) counts from the data beside the manifest's, with balance ratios."""
    class_names = manifest["class_names"]
    rows = []
    for split in facts["split"].unique():
        labels = facts.loc[facts["split"] == split, "label"]
        observed = labels.value_counts()
        expected = manifest["splits"].get(split, {}).get("per_class", {})
        counts = [int(observed.get(i, 0)) for i in range(len(class_names))]
        mean = max(float(np.mean(counts)), 1e-9)
        for index, name in enumerate(class_names):
            rows.append(
                {
                    "split": split,
                    "class_index": index,
                    "class_name": name,
                    "count": counts[index],
                    "manifest_count": int(expected.get(name, -1)),
                    "balance_ratio": counts[index] / mean,
                }
            )
    return pd.DataFrame(rows)


def channel_stats(data_dir: Path) -> pd.DataFrame:
    """Per (split, channel) pixel mean and std, scaled to [0, 1]."""
    rows = []
    for split in _present_splits(data_dir):
        images, _ = _arrays(data_dir, split)
        if images.ndim != 4 or images.shape[-1] != 3:
            continue  # the per-image shape expectations report this
        total = np.zeros(3)
        squares = np.zeros(3)
        count = 0
        for start in range(0, images.shape[0], _CHUNK):
            block = np.asarray(images[start : start + _CHUNK], dtype=np.float64) / 255.0
            total += block.sum(axis=(0, 1, 2))
            squares += (block**2).sum(axis=(0, 1, 2))
            count += block.shape[0] * block.shape[1] * block.shape[2]
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        for channel, m, s in zip(CHANNELS, mean, std, strict=True):
            rows.append({"split": split, "channel": channel, "mean": m, "std": s})
    return pd.DataFrame(rows)


def _present_splits(data_dir: Path) -> list[str]:
    manifest = read_manifest(data_dir)
    return [s for s in SPLITS if s in manifest["splits"]]


def _arrays(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    loaded = load_split(data_dir, split)
    return loaded.images, loaded.labels
