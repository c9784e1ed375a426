"""Dataset sources: the official CIFAR-10 python and binary archives and
tensorflow-datasets, and the :class:`RawDataset` every reader returns (the image folder's
and the labels file's readers are :mod:`~image_finetune.data.image_folder` and
:mod:`~image_finetune.data.labels_file`).

A :class:`RawDataset` holds, per split, uint8 images [N,H,W,3] and int64 labels, with the
class names. Problems are collected over the whole source and raised once, naming the files.

The CIFAR archives and TensorFlow Datasets are held in memory as they come (about 180 MB for
CIFAR-10's 60,000 images).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from image_finetune.data.files import archive_members
from image_finetune.data.rows import RowView
from image_finetune.errors import IngestError


@dataclass
class RawDataset:
    """Decoded images per split, with the class names their labels index."""

    class_names: list[str]
    images: dict[str, np.ndarray | RowView] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)  # file of each image, if any
    # sha256 of each image's file, where ingest splits the images by it (data.stable_split)
    content_sha256: dict[str, list[str]] = field(default_factory=dict)


def _cap_per_class(images: np.ndarray, labels: np.ndarray, cap: int | None):
    if cap is None:
        return images, labels
    keep = np.concatenate([np.flatnonzero(labels == c)[:cap] for c in np.unique(labels)])
    keep.sort()
    return images[keep], labels[keep]


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR-10 python format holds (dicts, lists, bytes, numbers
    and NumPy arrays): a crafted archive cannot run code on the ingesting machine."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of the CIFAR-10 format")


def _unpickle(data: bytes, member: str, path: Path) -> dict:
    import io

    try:
        loaded = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise IngestError(f"{path}: member {member} is not a CIFAR-10 batch ({exc})") from None
    if not isinstance(loaded, dict):
        raise IngestError(f"{path}: member {member} is not a CIFAR-10 batch (not a dict)")
    return loaded


def _require(members: dict[str, bytes], names: list[str], path: Path) -> None:
    missing = [n for n in names if n not in members]
    if missing:
        raise IngestError(f"{path}: not a CIFAR-10 archive, missing members", missing)


CIFAR_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
MAX_CIFAR_MEMBER_BYTES = 256 * 1024 * 1024  # a CIFAR-10 batch is about 31 MB


def read_cifar_python(path: Path, max_per_class: int | None = None) -> RawDataset:
    """Read the official ``cifar-10-python.tar.gz`` (pickled batches)."""
    wanted = [*CIFAR_TRAIN_BATCHES, "test_batch", "batches.meta"]
    members = archive_members(path, set(wanted), MAX_CIFAR_MEMBER_BYTES)
    _require(members, wanted, path)
    meta = _unpickle(members["batches.meta"], "batches.meta", path)
    class_names = [n.decode() if isinstance(n, bytes) else n for n in meta[b"label_names"]]
    dataset = RawDataset(class_names=class_names)
    for split, batches in (("train", CIFAR_TRAIN_BATCHES), ("test", ["test_batch"])):
        images, labels = [], []
        for batch_name in batches:
            batch = _unpickle(members[batch_name], batch_name, path)
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        dataset.images[split], dataset.labels[split] = _cap_per_class(
            np.concatenate(images), np.concatenate(labels), max_per_class
        )
    return dataset


def read_cifar_binary(path: Path, max_per_class: int | None = None) -> RawDataset:
    """Read the official ``cifar-10-binary.tar.gz`` (1 label byte + 3072 pixel bytes)."""
    train_files = [f"{b}.bin" for b in CIFAR_TRAIN_BATCHES]
    wanted = [*train_files, "test_batch.bin", "batches.meta.txt"]
    members = archive_members(path, set(wanted), MAX_CIFAR_MEMBER_BYTES)
    _require(members, wanted, path)
    class_names = [line for line in members["batches.meta.txt"].decode().split() if line]
    dataset = RawDataset(class_names=class_names)
    record = 1 + 3 * 32 * 32
    for split, files in (("train", train_files), ("test", ["test_batch.bin"])):
        raw = np.concatenate([np.frombuffer(members[f], dtype=np.uint8) for f in files])
        if raw.size % record:
            raise IngestError(f"{path}: {split} batches are truncated ({raw.size} bytes)")
        rows = raw.reshape(-1, record)
        images = rows[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        dataset.images[split], dataset.labels[split] = _cap_per_class(
            np.ascontiguousarray(images), rows[:, 0].astype(np.int64), max_per_class
        )
    return dataset


def read_tfds(name: str, max_per_class: int | None = None) -> RawDataset:
    """Load a dataset with tensorflow-datasets (downloads where there is internet)."""
    import tensorflow_datasets as tfds  # TensorFlow-only: imported where used

    builder = tfds.builder(name)
    try:
        builder.download_and_prepare()
    except OSError as exc:  # no network, refused, a proxy's error page (requests' errors too)
        raise IngestError(
            f"could not download {name!r} from TensorFlow Datasets ({exc}); "
            "set data.path to a local copy (data.source: folder)"
        ) from None
    class_names = list(builder.info.features["label"].names)
    dataset = RawDataset(class_names=class_names)
    for split in ("train", "test"):
        images, labels = tfds.as_numpy(
            builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
        )
        dataset.images[split], dataset.labels[split] = _cap_per_class(
            images.astype(np.uint8), labels.astype(np.int64), max_per_class
        )
    return dataset
