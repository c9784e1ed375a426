"""Images decoded one file at a time into a scratch folder on disk, by split and class, and
put together as a :class:`~image_finetune.data.sources.RawDataset` once every file is read
(the image folder's and the labels file's readers share it)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
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


class DecodedImages:
    """Decoded images by (split, class), each split's rows kept on disk under ``scratch``;
    at most ``max_per_class`` per bucket (None: all), the rest never read."""

    def __init__(
        self, scratch: Path, image_size: int, how: str, max_per_class: int | None = None
    ) -> None:
        self.scratch, self.image_size, self.how = scratch, image_size, how
        self.max_per_class = max_per_class
        self.buckets: dict[tuple[str, str], list[Decoded]] = {}
        self.sinks: dict[str, RowSink] = {}

    def add(
        self,
        bucket: tuple[str, str],
        name: str,
        read: Callable[[], bytes],
        problems: list[str],
        hashed: bool,
    ) -> None:
        """Read, decode and keep one file (a bad one is added to ``problems`` by name)."""
        decoded = self.buckets.setdefault(bucket, [])
        if self.max_per_class is not None and len(decoded) >= self.max_per_class:
            return
        try:
            data = read()
            image = decode_image(data, name, self.image_size, self.how)
        except IngestError:  # the source itself is unreadable (a truncated archive, say)
            raise
        except ValueError as exc:
            problems.append(str(exc))
            return
        split = bucket[0]
        if split not in self.sinks:
            self.sinks[split] = RowSink(self.scratch / split)
        sha256 = hashlib.sha256(data).hexdigest() if hashed else None
        decoded.append(Decoded(name, self.sinks[split].append(image), sha256))

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
