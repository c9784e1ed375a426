"""The canonical dataset format: per split uint8 images [N,H,W,3] and int64 labels as
``.npy``, and one ``manifest.json``. Unsharded (the default), a split is one
``{split}_images.npy`` and ``{split}_labels.npy``; sharded, it is ``{split}/images-00000.npy``,
``{split}/labels-00000.npy``, ... of ``shard_size`` rows each, every shard listed in the
manifest with its row count and file hashes. Either way the split's content hashes
(``images_sha256``, ``labels_sha256``) are the same for the same data.

Writes and reads stream: memory holds a chunk of rows, never a split.

Writes go to a temporary sibling directory that is renamed into place at the
end, so an interrupted or failed ingest never leaves partial outputs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from image_finetune.atomic import atomic_directory
from image_finetune.data.rows import CHUNK_ROWS, RowView, ShardedRows, iter_chunks, write_npy
from image_finetune.errors import CorruptInputError, MissingInputError
from image_finetune.file_names import DATA_MANIFEST
from image_finetune.hashing import content_digest, hashed, sha256_bytes, sha256_file

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    """One split of a canonical dataset: memory-mapped arrays, or row views over shards."""

    name: str
    images: np.ndarray | RowView
    labels: np.ndarray | RowView


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


def write_dataset(
    out_dir: Path,
    class_names: list[str],
    splits: Mapping[str, tuple[np.ndarray | RowView, np.ndarray | RowView]],
    extra_manifest: dict,
    sources: dict[str, list[str]] | None = None,
    shard_size: int | None = None,
) -> dict:
    """Write the canonical arrays and manifest atomically; return the manifest. ``sources``
    (the file each image came from, per split) lets later steps name files, not rows.
    ``shard_size`` (images per file; None: one file per split) shards each split. The
    images may be row views (:mod:`~image_finetune.data.rows`): they are read a chunk at a
    time."""
    manifest: dict = {
        "format": "image-finetune/canonical-v1",
        "class_names": class_names,
        "image_shape": None,
        "splits": {},
        **extra_manifest,
    }
    if shard_size is not None:
        manifest["shard_size"] = shard_size
    with atomic_directory(out_dir) as staging:
        for name, (images, labels) in splits.items():
            labels = np.asarray(labels)
            manifest["image_shape"] = list(images.shape[1:])
            manifest["splits"][name] = {
                **_split_counts(labels, class_names),
                **write_split_files(staging, name, images, labels, shard_size),
            }
            if sources and name in sources:
                names = json.dumps([str(s) for s in sources[name]]).encode()
                (staging / f"{name}_sources.json").write_bytes(names)
                manifest["splits"][name]["sources_sha256"] = sha256_bytes(names)
        (staging / DATA_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _split_counts(labels: np.ndarray, class_names: list[str]) -> dict:
    counts = np.bincount(labels, minlength=len(class_names))
    return {
        "count": int(labels.shape[0]),
        "per_class": {c: int(n) for c, n in zip(class_names, counts, strict=True)},
    }


def write_split_files(
    folder: Path, name: str, images, labels: np.ndarray, shard_size: int | None
) -> dict:
    """Write one split's files under ``folder``; return its manifest entries: the content
    hashes and, sharded, the list of shards."""
    content = {"images": content_digest(images), "labels": content_digest(labels)}
    shards = []
    for number, (start, stop) in enumerate(shard_ranges(len(images), shard_size)):
        shard: dict = {"rows": stop - start}
        for kind, array in (("images", images), ("labels", labels)):
            file = shard_file(name, kind, number, shard_size)
            (folder / file).parent.mkdir(parents=True, exist_ok=True)
            chunks = hashed(iter_chunks(array, CHUNK_ROWS, start, stop), content[kind])
            digest = write_npy(folder / file, (stop - start, *array.shape[1:]), array.dtype, chunks)
            shard[kind] = {"file": file, "sha256": digest}
        shards.append(shard)
    entry = {
        "images_sha256": content["images"].hexdigest(),
        "labels_sha256": content["labels"].hexdigest(),
    }
    return entry if shard_size is None else {**entry, "shards": shards}


def shard_ranges(count: int, shard_size: int | None) -> list[tuple[int, int]]:
    """Row ranges of the files of a split of ``count`` rows (one file at least)."""
    size = shard_size or max(count, 1)
    return [(start, min(start + size, count)) for start in range(0, max(count, 1), size)]


def shard_file(split: str, kind: str, number: int, shard_size: int | None) -> str:
    """Where a split's ``images`` or ``labels`` shard lives, relative to the dataset."""
    return f"{split}_{kind}.npy" if shard_size is None else f"{split}/{kind}-{number:05d}.npy"


def read_sources(data_dir: Path, split: str) -> list[str] | None:
    """The file each image of ``split`` came from (None: the source did not name them)."""
    path = Path(data_dir) / f"{split}_sources.json"
    return json.loads(path.read_text()) if path.exists() else None


def read_manifest(data_dir: Path) -> dict:
    """The dataset's manifest.json, with a clear error where there is none."""
    path = Path(data_dir) / DATA_MANIFEST
    if not path.exists():
        raise MissingInputError(f"{path}: no canonical dataset here (run the ingest step first)")
    return json.loads(path.read_text())


def load_split(data_dir: Path, name: str, mmap: bool = True) -> Split:
    """Load one split's arrays: memory-mapped by default; a sharded split as row views
    (:class:`~image_finetune.data.rows.ShardedRows`), read a shard at a time."""
    data_dir = Path(data_dir)
    shards = _listed_shards(data_dir, name)
    if shards is not None:
        images, labels = (
            sharded_rows(data_dir, name, shards, kind) for kind in ("images", "labels")
        )
        if not mmap:
            return Split(name=name, images=np.asarray(images), labels=np.asarray(labels))
        return Split(name=name, images=images, labels=labels)
    mode: Literal["r"] | None = "r" if mmap else None
    try:
        images = np.load(data_dir / f"{name}_images.npy", mmap_mode=mode, allow_pickle=False)
        labels = np.load(data_dir / f"{name}_labels.npy", mmap_mode=mode, allow_pickle=False)
    except FileNotFoundError as exc:
        raise MissingInputError(f"{data_dir}: split {name!r} is missing ({exc.filename})") from exc
    return Split(name=name, images=images, labels=labels)


def _listed_shards(data_dir: Path, name: str) -> list[dict] | None:
    """The shards the manifest lists for ``name`` (None: not sharded, or no manifest)."""
    if not (data_dir / DATA_MANIFEST).exists():
        return None
    return read_manifest(data_dir)["splits"].get(name, {}).get("shards")


def sharded_rows(data_dir: Path, split: str, shards: list[dict], kind: str) -> ShardedRows:
    """The ``images`` or ``labels`` of a sharded split, each shard's header checked against
    the manifest (its rows, and one row shape and dtype for all)."""
    headers = [_shard_header(data_dir / shard[kind]["file"], split) for shard in shards]
    for shard, (shape, dtype) in zip(shards, headers, strict=True):
        if shape[0] != shard["rows"] or (shape[1:], dtype) != (headers[0][0][1:], headers[0][1]):
            raise CorruptInputError(
                f"{data_dir / shard[kind]['file']}: {shape[0]} rows of {shape[1:]} {dtype}, "
                f"the manifest says {shard['rows']} rows like the first shard's "
                "(run the ingest step again)"
            )
    counts = [shard["rows"] for shard in shards]
    return ShardedRows(
        [data_dir / s[kind]["file"] for s in shards], counts, headers[0][0][1:], headers[0][1]
    )


def _shard_header(path: Path, split: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise MissingInputError(
            f"{path}: shard of split {split!r} is missing (run the ingest step again)"
        ) from None
    except ValueError as exc:
        raise CorruptInputError(
            f"{path}: not a readable .npy shard ({exc}); run the ingest step again"
        ) from None
    return mapped.shape, mapped.dtype


def verify_shards(data_dir: Path) -> int:
    """Check every shard's file against the sha256 the manifest lists (a sequential read,
    no file held in memory); return how many files were checked. Unsharded splits list no
    file hashes and are skipped."""
    data_dir = Path(data_dir)
    files = [
        shard[kind]
        for entry in read_manifest(data_dir)["splits"].values()
        for shard in entry.get("shards", [])
        for kind in ("images", "labels")
    ]
    for listed in files:
        path = data_dir / listed["file"]
        if not path.exists():
            raise MissingInputError(f"{path}: shard is missing (run the ingest step again)")
        if sha256_file(path) != listed["sha256"]:
            raise CorruptInputError(
                f"{path}: sha256 differs from the manifest's: the shard "
                "changed after ingest (run the ingest step again)"
            )
    return len(files)


def manifest_digest(data_dir: Path) -> str:
    """sha256 of manifest.json: one hash that pins every array of the dataset."""
    return sha256_file(Path(data_dir) / DATA_MANIFEST)
