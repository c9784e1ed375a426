"""Row views over data on disk: what lets a step read a dataset larger than memory.

- :class:`ShardedRows`: several ``.npy`` shards seen as one array, read row by row through
  memory maps. Only one shard is mapped at a time, so the pages a reader touches leave its
  resident memory when it moves on: memory stays bounded by one shard, not the dataset.
- :class:`TakenRows`: a lazy ``base[rows]``, gathered only when read.
- :func:`iter_chunks`: any of these (or a plain array) in consecutive chunks of rows.
- :func:`write_npy`: an ``.npy`` file written chunk by chunk, byte for byte what
  ``np.save`` writes, with its sha256.

Reads return NumPy arrays (copies), never views that hold a map open.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

CHUNK_ROWS = 4096


def row_index(key, length: int) -> np.ndarray:
    """A slice, a sequence of ints or a boolean mask as an int64 index array (negatives
    counted from the end), with an IndexError for a row out of range."""
    if isinstance(key, slice):
        return np.arange(*key.indices(length), dtype=np.int64)
    index = np.asarray(key)
    if index.dtype == bool:
        if index.shape != (length,):
            raise IndexError(f"boolean index of shape {index.shape} for {length} rows")
        return np.flatnonzero(index)
    if index.size and not np.issubdtype(index.dtype, np.integer):
        raise IndexError(f"rows are indexed by ints, slices or masks, not {index.dtype}")
    index = index.astype(np.int64).ravel()
    if index.size and (index.min() < -length or index.max() >= length):
        raise IndexError(f"row index out of range for {length} rows")
    return np.where(index < 0, index + length, index)


class RowView:
    """What every row view shares: array-like attributes, tuple keys, iteration, and
    ``np.asarray`` (which reads every row: for labels and small splits)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):
            rows, rest = key[0], key[1:]
            picked = self[rows]
            return (
                picked[rest] if isinstance(rows, int | np.integer) else picked[(slice(None), *rest)]
            )
        if isinstance(key, int | np.integer):
            if not -len(self) <= key < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            return self.rows(np.array([int(key) % len(self)]))[0]
        return self.rows(row_index(key, len(self)))

    def rows(self, index: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __iter__(self) -> Iterator[np.ndarray]:
        for chunk in iter_chunks(self, CHUNK_ROWS):
            yield from chunk

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.rows(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)


Rows = np.ndarray | RowView  # what a reader of rows in batches takes: an array or a view


class ShardedRows(RowView):
    """The rows of ``.npy`` shards (same row shape and dtype), in order, as one array."""

    def __init__(
        self, paths: Sequence[Path], counts: Sequence[int], row_shape: tuple[int, ...], dtype
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.shape = (int(self.starts[-1]), *row_shape)
        self.dtype = np.dtype(dtype)
        self._mapped: tuple[int, np.ndarray] | None = None  # the one shard mapped now

    def __getstate__(self) -> dict:
        # A worker process maps its own shards: pickling a map would copy the shard.
        return {**self.__dict__, "_mapped": None}

    def shard(self, number: int) -> np.ndarray:
        """Shard ``number`` memory-mapped (the previous one is unmapped)."""
        mapped = self._mapped
        if mapped is None or mapped[0] != number:
            mapped = (number, np.load(self.paths[number], mmap_mode="r", allow_pickle=False))
            self._mapped = mapped
        return mapped[1]

    def rows(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((index.size, *self.shape[1:]), dtype=self.dtype)
        order = np.argsort(index, kind="stable")
        ordered = index[order]
        shards = np.searchsorted(self.starts, ordered, side="right") - 1
        bounds = np.flatnonzero(np.diff(shards)) + 1
        for positions in np.split(np.arange(ordered.size), bounds):
            if positions.size:
                number = int(shards[positions[0]])
                local = ordered[positions] - self.starts[number]
                out[order[positions]] = _gather(self.shard(number), local)
        return out


def _gather(array: np.ndarray, local: np.ndarray) -> np.ndarray:
    """``array[local]`` for sorted rows, as a contiguous slice where the rows are one."""
    first, last = int(local[0]), int(local[-1])
    if last - first + 1 == local.size:
        return array[first : last + 1]
    return array[local]


class TakenRows(RowView):
    """``base[rows]`` without reading it: the rows are gathered when they are read."""

    def __init__(self, base, rows: np.ndarray) -> None:
        self.base, self.index = base, np.asarray(rows, dtype=np.int64)
        self.shape = (self.index.size, *base.shape[1:])
        self.dtype = np.dtype(base.dtype)

    def rows(self, index: np.ndarray) -> np.ndarray:
        return np.asarray(self.base[self.index[index]])


class JoinedRows(RowView):
    """Arrays or row views of one row shape and dtype, one after another, as one."""

    def __init__(self, parts: Sequence) -> None:
        self.parts = list(parts)
        shapes = {tuple(part.shape[1:]) for part in self.parts}
        if len(shapes) != 1 or len({np.dtype(part.dtype) for part in self.parts}) != 1:
            raise ValueError(f"joined rows must share a row shape and dtype, got {shapes}")
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])])
        self.shape = (int(self.starts[-1]), *shapes.pop())
        self.dtype = np.dtype(self.parts[0].dtype)

    def rows(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((index.size, *self.shape[1:]), dtype=self.dtype)
        owner = np.searchsorted(self.starts, index, side="right") - 1
        for number in np.unique(owner):
            picked = owner == number
            out[picked] = np.asarray(self.parts[number][index[picked] - self.starts[number]])
        return out


def take(base, rows: np.ndarray | None):
    """``base[rows]``, lazily (None: all of ``base``); a take of a take is one take."""
    if rows is None:
        return base
    if isinstance(base, TakenRows):
        return TakenRows(base.base, base.index[rows])
    return TakenRows(base, rows)


def iter_chunks(
    array, size: int = CHUNK_ROWS, start: int = 0, stop: int | None = None
) -> Iterator[np.ndarray]:
    """Rows ``start:stop`` of an array or row view, ``size`` at a time, as arrays."""
    stop = len(array) if stop is None else stop
    for begin in range(start, stop, size):
        yield np.asarray(array[begin : min(begin + size, stop)])


def write_npy(path: Path, shape: tuple[int, ...], dtype, chunks: Iterable[np.ndarray]) -> str:
    """Write an ``.npy`` file of ``shape`` from consecutive chunks of rows (memory holds one
    chunk); return the file's sha256. The bytes are those ``np.save`` would write."""
    dtype = np.dtype(dtype)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header,
        {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": tuple(int(n) for n in shape),
        },
    )
    digest = hashlib.sha256(header.getvalue())
    written = 0
    with Path(path).open("wb") as handle:
        handle.write(header.getvalue())
        for chunk in chunks:
            block = np.ascontiguousarray(chunk, dtype=dtype)
            if block.shape[1:] != tuple(shape[1:]):
                raise ValueError(
                    f"{path}: rows of shape {block.shape[1:]}, expected {tuple(shape[1:])}"
                )
            handle.write(block.data)
            digest.update(block.data)
            written += block.shape[0]
    if written != shape[0]:
        raise ValueError(f"{path}: {written} rows written, {shape[0]} expected")
    return digest.hexdigest()


class RowSink:
    """Rows appended one at a time, kept on disk in ``.npy`` files of ``size`` rows under
    ``folder``: a stream of unknown length (decoded images, say) that memory never holds."""

    def __init__(self, folder: Path, size: int = CHUNK_ROWS) -> None:
        self.folder, self.size = Path(folder), size
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pending: list[np.ndarray] = []
        self.paths: list[Path] = []
        self.counts: list[int] = []

    def append(self, row: np.ndarray) -> int:
        """Add a row; return its number."""
        number = sum(self.counts) + len(self.pending)
        self.pending.append(row)
        if len(self.pending) == self.size:
            self.flush()
        return number

    def flush(self) -> None:
        """Write the pending rows to the next file."""
        if self.pending:
            path = self.folder / f"rows-{len(self.paths):05d}.npy"
            np.save(path, np.stack(self.pending), allow_pickle=False)
            self.paths.append(path)
            self.counts.append(len(self.pending))
            self.pending = []

    def rows(self) -> ShardedRows:
        """Every row appended so far, as one array."""
        self.flush()
        first = np.load(self.paths[0], mmap_mode="r") if self.paths else np.empty((0,))
        return ShardedRows(self.paths, self.counts, first.shape[1:], first.dtype)
