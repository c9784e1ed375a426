"""Dataset sources: an image-folder tree (directory or .tar.gz), the official
CIFAR-10 python and binary archives, and tensorflow-datasets.

Each reader returns a :class:`RawDataset`: per split, uint8 images [N,H,W,3]
and int64 labels, with the class names. Problems are collected over the whole
source and raised once, naming the files.

The image folder streams: each image is decoded and written to a scratch folder on disk,
so memory holds no split whatever the folder's size. The CIFAR archives and TensorFlow
Datasets are held in memory as they come (about 180 MB for CIFAR-10's 60,000 images).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from image_finetune.data.files import archive_members, walk
from image_finetune.data.images import decode_image
from image_finetune.data.rows import RowSink, RowView, take
from image_finetune.errors import IngestError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
KNOWN_SPLITS = ("train", "validation", "test")

@dataclass
class RawDataset:
    """Decoded images per split, with the class names their labels index."""

    class_names: list[str]
    images: dict[str, np.ndarray | RowView] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)  # file of each image, if any


def _strip_common_root(parts: tuple[str, ...]) -> tuple[str, ...]:
    """``root/split/class/file`` -> ``split/class/file`` (archives often wrap one folder)."""
    return parts[1:] if len(parts) > 1 and parts[0] not in KNOWN_SPLITS else parts


def read_image_folder(
    path: Path, image_size: int, how: str, scratch: Path, max_per_class: int | None = None
) -> RawDataset:
    """Read ``split/class/*.png|jpg|jpeg`` from a directory or a .tar(.gz) archive; the
    decoded images are kept in ``scratch``, which must outlive the returned dataset.

    Images of another size than ``image_size`` are fitted ``how`` (see
    :data:`~image_finetune.data.images.FIT_MODES`). Classes are the train split's folders,
    sorted; every other split must have exactly those classes. Hidden files (``.*``) and
    OS clutter (Thumbs.db, desktop.ini, __MACOSX) are ignored; anything else that is not an
    image in a class folder, a name that is not UTF-8, a link or an oversized file is an
    error naming the file.
    """
    if not path.exists():
        raise IngestError(f"{path}: data source not found (set data.path or $IMAGE_FINETUNE_DATA)")
    problems: list[str] = []
    decoded: dict[tuple[str, str], list[tuple[str, int]]] = {}  # file name, row in its sink
    sinks: dict[str, RowSink] = {}
    class_dirs: dict[str, set[str]] = {}
    entries = walk(path, problems)
    for entry in tqdm(entries, desc=f"decode {path.name}", unit="img", mininterval=1.0):
        parts = _strip_common_root(entry.path.parts)
        if entry.is_folder:
            if len(parts) >= 2 and parts[0] in KNOWN_SPLITS:
                class_dirs.setdefault(parts[0], set()).add(parts[1])
            continue
        problem = _placement_problem(entry.path, parts)
        if problem:
            problems.append(problem)
            continue
        split, class_name, filename = parts
        class_dirs.setdefault(split, set()).add(class_name)
        bucket = decoded.setdefault((split, class_name), [])
        if max_per_class is not None and len(bucket) >= max_per_class:
            continue
        try:
            image = decode_image(entry.read(), str(entry.path), image_size, how)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if split not in sinks:
            sinks[split] = RowSink(scratch / split)
        bucket.append((filename, sinks[split].append(image)))
    if problems:
        raise IngestError(f"{path}: bad files in the image folder", problems)
    return _assemble_folder(path, decoded, class_dirs, sinks)


def _placement_problem(rel: PurePosixPath, parts: tuple[str, ...]) -> str | None:
    """Why a file cannot be an image of the dataset (None: it can, by its place and name)."""
    if len(parts) != 3 or parts[0] not in KNOWN_SPLITS:
        return f"{rel}: not at split/class/file (splits: {', '.join(KNOWN_SPLITS)})"
    if PurePosixPath(parts[2]).suffix.lower() not in IMAGE_SUFFIXES:
        return f"{rel}: not an image file (expected .png, .jpg or .jpeg)"
    return None


def _assemble_folder(
    path: Path,
    decoded: dict[tuple[str, str], list[tuple[str, int]]],
    class_dirs: dict[str, set[str]],
    sinks: dict[str, RowSink],
) -> RawDataset:
    if "train" not in class_dirs:
        raise IngestError(f"{path}: no train/ split found")
    class_names = sorted(class_dirs["train"])
    problems = []
    for split, names in sorted(class_dirs.items()):
        for unknown in sorted(names - set(class_names)):
            problems.append(f"{split}/{unknown}: unknown class (not among train's classes)")
        for missing in sorted(set(class_names) - names):
            problems.append(f"{split}/{missing}: missing class folder")
        for name in sorted(names & set(class_names)):
            if not decoded.get((split, name)):
                problems.append(f"{split}/{name}: empty class (no images)")
    if problems:
        raise IngestError(f"{path}: the class folders are inconsistent", problems)
    dataset = RawDataset(class_names=class_names)
    for split in sorted(class_dirs):
        rows, labels, sources = [], [], []
        for index, name in enumerate(class_names):
            for filename, row in sorted(decoded[(split, name)], key=lambda item: item[0]):
                rows.append(row)
                labels.append(index)
                sources.append(f"{split}/{name}/{filename}")
        dataset.sources[split] = sources
        dataset.images[split] = take(sinks[split].rows(), np.asarray(rows, dtype=np.int64))
        dataset.labels[split] = np.asarray(labels, dtype=np.int64)
    return dataset


def _cap_per_class(images: np.ndarray, labels: np.ndarray, cap: int | None):
    if cap is None:
        return images, labels
    keep = np.concatenate([np.flatnonzero(labels == c)[:cap] for c in np.unique(labels)])
    keep.sort()
    return images[keep], labels[keep]


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR-10 python format holds (dicts, lists, bytes, numbers
    and NumPy arrays): a crafted archive cannot run code on the ingesting machine."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    })

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
        raise IngestError(f"could not download {name!r} from TensorFlow Datasets ({exc}); "
                          "set data.path to a local copy (data.source: folder)") from None
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
