"""Images decoded into a scratch folder on disk, by split and class, and put together as a
:class:`~image_finetune.data.sources.RawDataset` once every file is read (the image folder's
and the labels file's readers share it). Files are read in order in this process; past the
first few thousand, worker processes decode them, and each is kept in the order it was read,
so the result is the same either way."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from image_finetune.data.images import decode_image
from image_finetune.data.layouts import UNSPLIT
from image_finetune.data.rows import RowSink, take
from image_finetune.data.sources import RawDataset
from image_finetune.errors import IngestError


@dataclass(frozen=True)
class Decoded:
    """One decoded image: the file it came from, its row in its split's sink, and (where the
    split is to be made by content) the sha256 of the file's bytes."""

    name: str
    row: int
    sha256: str | None


# PIL spends as long in Python as in C on a small image, so threads would not decode
# faster: past this many images, worker processes (one per core) do. A small folder, or a
# run capped per class (whose count decides what is read next), decodes here.
PARALLEL_AFTER = 2_000
CHUNK_IMAGES, CHUNK_BYTES = 500, 16 << 20  # one task for a worker
CHUNKS_IN_FLIGHT = 4  # read-ahead: what memory holds beyond the chunk being filled


@dataclass(frozen=True)
class ReadFile:
    """A file read and waiting to be decoded: where it goes and whom to tell if it is bad."""

    bucket: tuple[str, str]
    name: str
    data: bytes
    problems: list[str]
    sha256: str | None


def decode_files(items: list[tuple[str, bytes]], image_size: int, how: str) -> list:
    """Each (name, bytes) decoded (see :func:`decode_image`), or why it could not be."""
    decoded: list[np.ndarray | str] = []
    for name, data in items:
        try:
            decoded.append(decode_image(data, name, image_size, how))
        except ValueError as exc:
            decoded.append(str(exc))
    return decoded


def decode_workers() -> int:
    """The cores this process may use (1: decode here)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


class DecodedImages:
    """Decoded images by (split, class), each split's rows kept on disk under ``scratch``;
    at most ``max_per_class`` per bucket (None: all), the rest never read. A context manager:
    leaving it stops the worker processes; :meth:`finish` waits for every file added."""

    def __init__(
        self,
        scratch: Path,
        image_size: int,
        how: str,
        max_per_class: int | None = None,
        workers: int | None = None,
    ) -> None:
        self.scratch, self.image_size, self.how = scratch, image_size, how
        self.max_per_class = max_per_class
        self.buckets: dict[tuple[str, str], list[Decoded]] = {}
        self.sinks: dict[str, RowSink] = {}
        self.workers = decode_workers() if workers is None else workers
        self.pool: ProcessPoolExecutor | None = None
        self.chunk: list[ReadFile] = []
        self.chunk_bytes = 0
        self.in_flight: deque[tuple[Future, list[ReadFile]]] = deque()
        self.decoded_here = 0

    def __enter__(self) -> DecodedImages:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def add(
        self,
        bucket: tuple[str, str],
        name: str,
        read: Callable[[], bytes],
        problems: list[str],
        hashed: bool,
    ) -> None:
        """Read one file and decode and keep it, here or in a worker (a bad one is added to
        ``problems`` by name, by :meth:`finish` at the latest)."""
        decoded = self.buckets.setdefault(bucket, [])
        if self.max_per_class is not None and len(decoded) >= self.max_per_class:
            return
        try:
            data = read()
        except IngestError:  # the source itself is unreadable (a truncated archive, say)
            raise
        except ValueError as exc:
            problems.append(str(exc))
            return
        sha256 = hashlib.sha256(data).hexdigest() if hashed else None
        item = ReadFile(bucket, name, data, problems, sha256)
        if self.max_per_class is not None or self.workers < 2 or self.decoded_here < PARALLEL_AFTER:
            self.decoded_here += 1
            [result] = decode_files([(name, data)], self.image_size, self.how)
            self._keep(item, result)
            return
        self.chunk.append(item)
        self.chunk_bytes += len(data)
        if len(self.chunk) >= CHUNK_IMAGES or self.chunk_bytes >= CHUNK_BYTES:
            self._submit()

    def finish(self) -> None:
        """Wait until every file added is decoded and kept (or its problem recorded)."""
        if self.chunk:
            self._submit()
        while self.in_flight:
            self._collect()

    def _submit(self) -> None:
        if self.pool is None:
            # forkserver: the workers start clean, whatever threads this process runs
            context = multiprocessing.get_context("forkserver")
            self.pool = ProcessPoolExecutor(self.workers, mp_context=context)
        items, self.chunk, self.chunk_bytes = self.chunk, [], 0
        task = [(item.name, item.data) for item in items]
        self.in_flight.append(
            (self.pool.submit(decode_files, task, self.image_size, self.how), items)
        )
        while len(self.in_flight) > CHUNKS_IN_FLIGHT:
            self._collect()

    def _collect(self) -> None:
        future, items = self.in_flight.popleft()
        try:
            results = future.result()
        except BrokenProcessPool:
            raise IngestError(
                f"an image decoder process died on one of {items[0].name} .. {items[-1].name}"
            ) from None
        for item, result in zip(items, results, strict=True):
            self._keep(item, result)

    def _keep(self, item: ReadFile, result: np.ndarray | str) -> None:
        if isinstance(result, str):
            item.problems.append(result)
            return
        split = item.bucket[0]
        if split not in self.sinks:
            self.sinks[split] = RowSink(self.scratch / split)
        row = self.sinks[split].append(result)
        self.buckets[item.bucket].append(Decoded(item.name, row, item.sha256))

    def dataset(
        self,
        source: object,
        class_dirs: dict[str, set[str]],
        reference: str,
        kind: str = "class folder",
    ) -> RawDataset:
        """The decoded images as a dataset whose classes are ``reference``'s class folders
        (or labels: ``kind``), sorted; every split must have exactly those classes, none
        empty."""
        class_names = sorted(class_dirs[reference])
        problems = class_problems(class_dirs, self.buckets, class_names, reference, kind)
        if problems:
            raise IngestError(f"{source}: the {kind}s are inconsistent", problems)
        dataset = RawDataset(class_names=class_names)
        for split in sorted(class_dirs):
            rows, labels, files = [], [], []
            for index, name in enumerate(class_names):
                for image in sorted(self.buckets[(split, name)], key=lambda item: item.name):
                    rows.append(image.row)
                    labels.append(index)
                    files.append(image)
            dataset.sources[split] = [image.name for image in files]
            if files and files[0].sha256 is not None:
                # hashed is one setting per dataset: the first file hashed, every file is
                dataset.content_sha256[split] = cast("list[str]", [image.sha256 for image in files])
            dataset.images[split] = take(self.sinks[split].rows(), np.asarray(rows, np.int64))
            dataset.labels[split] = np.asarray(labels, dtype=np.int64)
        return dataset


def class_problems(
    class_dirs: dict[str, set[str]],
    buckets: dict,
    class_names: list[str],
    reference: str,
    kind: str = "class folder",
) -> list[str]:
    """Each split's classes that are not ``reference``'s, missing or without an image."""
    problems = []
    absent = "missing class folder" if kind == "class folder" else f"no images with this {kind}"
    for split, names in sorted(class_dirs.items()):
        where = "" if split == UNSPLIT else f"{split}/"
        for unknown in sorted(names - set(class_names)):
            problems.append(f"{where}{unknown}: unknown class (not among {reference}'s classes)")
        for missing in sorted(set(class_names) - names):
            problems.append(f"{where}{missing}: {absent}")
        for name in sorted(names & set(class_names)):
            if not buckets.get((split, name)):
                problems.append(f"{where}{name}: empty class (no images)")
    return problems
