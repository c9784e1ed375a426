"""Splitting images that came without splits by each file's own content: the same file
lands in the same split on every run, whatever else is in the folder.

A file's split is a function of the sha256 of its bytes and the seed only: the hash, salted
with the seed, is read as a number in [0, 1); below ``test_fraction`` it is a test image,
below ``test_fraction + validation_fraction`` a validation image, else a training image.
So the order and the number of files play no part: adding images never moves an earlier one
(the test set never leaks into training when the dataset grows), an identical copy of an
image can never sit on both sides of the split, and each class's splits hold the fractions
approximately (binomially: a class of n images holds about ``fraction * n`` test images), so
data validation judges the class balance of such a dataset over all its splits together.

Why no per-class minimum is forced: a rule that keeps every file where it was whatever is
added can depend on nothing but the file itself (were the split of a file to depend on the
other files, some set of added files would move it), so it cannot promise a class of 30
images 10 test images. Ingest checks the minimums instead (``data.min_test_per_class``,
``data.min_validation_per_class``) and says which classes fall short and what to do.
"""

from __future__ import annotations

import hashlib

import numpy as np

SPLITS = ("train", "validation", "test")
# The manifest's name for splits made here (its test_holdout and validation_holdout).
BY_CONTENT = "content-hash"
_SCALE = float(1 << 64)


def content_position(content_sha256: str, seed: int) -> float:
    """Where a file falls in [0, 1): its content hash salted with the seed, uniform."""
    salted = hashlib.sha256(f"{seed}\0{content_sha256}".encode()).digest()
    return int.from_bytes(salted[:8], "big") / _SCALE


def split_of(
    content_sha256: str, seed: int, test_fraction: float, validation_fraction: float
) -> str:
    """The split of a file with this content: test, validation or train."""
    position = content_position(content_sha256, seed)
    if position < test_fraction:
        return "test"
    if position < test_fraction + validation_fraction:
        return "validation"
    return "train"


def split_by_content(
    hashes: list[str], seed: int, test_fraction: float, validation_fraction: float
) -> dict[str, np.ndarray]:
    """The rows of each split (train, validation, test), ascending, for the files' hashes."""
    names = np.asarray(
        [split_of(h, seed, test_fraction, validation_fraction) for h in hashes], dtype=object
    )
    return {split: np.flatnonzero(names == split).astype(np.int64) for split in SPLITS}
