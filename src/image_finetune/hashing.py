"""Content hashes: of a file's bytes, and of an array's dtype, shape and bytes (whole, or fed
chunk by chunk as it streams). One definition, shared by the dataset format, the sources
record, the engine folder and the registry's lineage."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np


def sha256_array(array: np.ndarray) -> str:
    """Content hash of an array's dtype, shape and bytes."""
    digest = content_digest(array)
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """sha256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def content_digest(array):
    """The running form of :func:`sha256_array`: fed the array's bytes, it gives its hash."""
    return hashlib.sha256(f"{np.dtype(array.dtype).str}{tuple(array.shape)}".encode())


def hashed(chunks: Iterable[np.ndarray], digest) -> Iterator[np.ndarray]:
    """``chunks`` as they are, each fed to ``digest`` on the way."""
    for chunk in chunks:
        digest.update(np.ascontiguousarray(chunk).data)
        yield chunk
