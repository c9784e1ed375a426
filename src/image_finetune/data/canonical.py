"""The canonical dataset format: per split ``{split}_images.npy`` (uint8
[N,H,W,3]), ``{split}_labels.npy`` (int64) and one ``manifest.json``.

Writes go to a temporary sibling directory that is renamed into place at the
end, so an interrupted or failed ingest never leaves partial outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from image_finetune.errors import MissingInputError

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Split:
    """One split of a canonical dataset (arrays memory-mapped read-only)."""

    name: str
    images: np.ndarray
    labels: np.ndarray


def sha256_array(array: np.ndarray) -> str:
    """Content hash of an array's dtype, shape and bytes."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def held_out_count(class_size: int, fraction: float, minimum: int) -> int:
    """Images of a class to hold out: ``fraction`` of it, at least ``minimum``, but never
    more than a third of the class (training needs the rest); one at least, all but one at
    most."""
    if class_size < 2:
        return 0
    wanted = max(int(round(fraction * class_size)), min(minimum, class_size // 3))
    return min(max(wanted, 1), class_size - 1)


def split_stratified(
    labels: np.ndarray, fraction: float, seed: int, minimum: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): ``fraction`` of each class held out (at least ``minimum``,
    see :func:`held_out_count`), seeded, sorted."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(members.size)]
        n_held = held_out_count(members.size, fraction, minimum)
        held.append(members[:n_held])
        keep.append(members[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block succeeds.

    The staging folder is removed on any failure (SIGTERM included, where the entry point
    turns it into SystemExit); the result gets the permissions the umask gives a folder.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    staging.chmod(0o777 & ~current_umask())
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = staging.with_name(staging.name.replace(".tmp-", ".old-"))
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_dataset(
    out_dir: Path,
    class_names: list[str],
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    extra_manifest: dict,
    sources: dict[str, list[str]] | None = None,
) -> dict:
    """Write the canonical arrays and manifest atomically; return the manifest. ``sources``
    (the file each image came from, per split) lets later steps name files, not rows."""
    manifest: dict = {
        "format": "image-finetune/canonical-v1",
        "class_names": class_names,
        "image_shape": None,
        "splits": {},
        **extra_manifest,
    }
    with atomic_directory(out_dir) as staging:
        for name, (images, labels) in splits.items():
            np.save(staging / f"{name}_images.npy", images, allow_pickle=False)
            np.save(staging / f"{name}_labels.npy", labels, allow_pickle=False)
            manifest["image_shape"] = list(images.shape[1:])
            manifest["splits"][name] = _split_entry(images, labels, class_names)
            if sources and name in sources:
                names = json.dumps([str(s) for s in sources[name]]).encode()
                (staging / f"{name}_sources.json").write_bytes(names)
                manifest["splits"][name]["sources_sha256"] = hashlib.sha256(names).hexdigest()
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _split_entry(images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    counts = np.bincount(labels, minlength=len(class_names))
    return {"count": int(images.shape[0]),
            "per_class": {c: int(n) for c, n in zip(class_names, counts, strict=True)},
            "images_sha256": sha256_array(images), "labels_sha256": sha256_array(labels)}


def read_sources(data_dir: Path, split: str) -> list[str] | None:
    """The file each image of ``split`` came from (None: the source did not name them)."""
    path = Path(data_dir) / f"{split}_sources.json"
    return json.loads(path.read_text()) if path.exists() else None


def read_manifest(data_dir: Path) -> dict:
    """The dataset's manifest.json, with a clear error where there is none."""
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        raise MissingInputError(f"{path}: no canonical dataset here (run the ingest step first)")
    return json.loads(path.read_text())


def load_split(data_dir: Path, name: str, mmap: bool = True) -> Split:
    """Load one split's arrays (memory-mapped by default)."""
    data_dir = Path(data_dir)
    mode = "r" if mmap else None
    try:
        images = np.load(data_dir / f"{name}_images.npy", mmap_mode=mode, allow_pickle=False)
        labels = np.load(data_dir / f"{name}_labels.npy", mmap_mode=mode, allow_pickle=False)
    except FileNotFoundError as exc:
        raise MissingInputError(f"{data_dir}: split {name!r} is missing ({exc.filename})") from exc
    return Split(name=name, images=images, labels=labels)


def manifest_digest(data_dir: Path) -> str:
    """sha256 of manifest.json: one hash that pins every array of the dataset."""
    return sha256_file(Path(data_dir) / MANIFEST)
