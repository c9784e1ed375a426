"""Row views over data on disk: sharded rows and lazy takes read exactly what a plain array
would give, and the chunked .npy writer writes exactly what np.save writes."""

import hashlib
import io
import pickle

import numpy as np
import pytest

from image_finetune.data.rows import RowSink, ShardedRows, iter_chunks, take, write_npy

ROWS = np.random.default_rng(0).integers(0, 256, (23, 2, 2, 3), dtype=np.uint8)
SHARD_ROWS = [5, 5, 5, 8]

KEYS = [
    0,
    4,
    5,
    22,
    -1,
    -23,
    np.int64(9),
    slice(None),
    slice(3, 12),
    slice(4, 6),
    slice(10, 3),
    slice(None, None, 3),
    slice(20, 2, -4),
    slice(-5, None),
    np.array([0, 4, 5, 14, 15, 22]),
    np.array([22, 0, 9, 9, 3]),
    [7, -1, 2],
    np.array([], dtype=np.int64),
    ROWS[:, 0, 0, 0] > 128,
    (slice(2, 9), slice(None), slice(None, None, -1)),
    (3, 1),
]


@pytest.fixture
def sharded(tmp_path) -> ShardedRows:
    starts = np.cumsum([0, *SHARD_ROWS])
    paths = []
    for number, (start, stop) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
        paths.append(tmp_path / f"rows-{number}.npy")
        np.save(paths[-1], ROWS[start:stop])
    return ShardedRows(paths, SHARD_ROWS, ROWS.shape[1:], ROWS.dtype)


@pytest.mark.parametrize("key", KEYS, ids=[repr(k)[:40] for k in KEYS])
def test_sharded_rows_index_like_the_array(sharded, key):
    got = sharded[key]
    assert isinstance(got, np.ndarray) and not isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, ROWS[key])
    assert got.dtype == ROWS.dtype


@pytest.mark.parametrize("key", KEYS, ids=[repr(k)[:40] for k in KEYS])
def test_taken_rows_index_like_the_taken_array(sharded, key):
    rows = np.array(
        [22, 3, 3, 10, 0, 17, 5, 6, 1, 2, 4, 7, 8, 9, 11, 12, 13, 14, 15, 16, 18, 19, 20]
    )
    np.testing.assert_array_equal(take(sharded, rows)[key], ROWS[rows][key])
    inner = take(take(sharded, rows), rows[::-1])
    np.testing.assert_array_equal(inner[key], ROWS[rows][rows[::-1]][key])


def test_sharded_rows_look_like_an_array(sharded):
    assert (len(sharded), sharded.shape, sharded.ndim, sharded.dtype) == (
        23,
        ROWS.shape,
        4,
        np.uint8,
    )
    np.testing.assert_array_equal(np.asarray(sharded), ROWS)
    np.testing.assert_array_equal(np.stack(list(sharded)), ROWS)
    np.testing.assert_array_equal(np.concatenate(list(iter_chunks(sharded, 7))), ROWS)
    assert [len(c) for c in iter_chunks(sharded, 7, start=2, stop=20)] == [7, 7, 4]
    for key in (23, -24, np.array([3, 23]), np.array([0.5])):
        with pytest.raises(IndexError):
            sharded[key]


def test_sharded_rows_pickle_without_their_open_map(sharded):
    unmapped = len(pickle.dumps(sharded))
    sharded[20]
    copy = pickle.loads(pickle.dumps(sharded))
    assert len(pickle.dumps(sharded)) == unmapped
    np.testing.assert_array_equal(copy[:], ROWS)


def test_write_npy_writes_what_np_save_writes(tmp_path):
    expected = io.BytesIO()
    np.save(expected, ROWS)
    digest = write_npy(tmp_path / "a.npy", ROWS.shape, ROWS.dtype, iter_chunks(ROWS, 6))
    assert (tmp_path / "a.npy").read_bytes() == expected.getvalue()
    assert digest == hashlib.sha256(expected.getvalue()).hexdigest()
    with pytest.raises(ValueError, match="22 rows written, 23 expected"):
        write_npy(tmp_path / "b.npy", ROWS.shape, ROWS.dtype, iter_chunks(ROWS[:22], 6))


def test_row_sink_keeps_a_stream_on_disk(tmp_path):
    sink = RowSink(tmp_path / "sink", size=4)
    numbers = [sink.append(row) for row in ROWS]
    assert numbers == list(range(23))
    stored = sink.rows()
    assert len(list((tmp_path / "sink").iterdir())) == 6
    np.testing.assert_array_equal(stored[:], ROWS)
    assert len(RowSink(tmp_path / "empty").rows()) == 0


def test_joined_rows_index_like_the_concatenated_arrays(tmp_path):
    from image_finetune.data.rows import JoinedRows, RowSink

    first = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    sink = RowSink(tmp_path / "sink", size=2)
    second = np.arange(100, 100 + 3 * 2 * 3, dtype=np.uint8).reshape(3, 2, 3)
    for row in second:
        sink.append(row)
    joined, whole = JoinedRows([first, sink.rows()]), np.concatenate([first, second])
    assert joined.shape == whole.shape and joined.dtype == whole.dtype
    for key in (slice(None), [7, 0, 5, 4], slice(3, 7), -1):
        np.testing.assert_array_equal(joined[key], whole[key])
    with pytest.raises(ValueError, match="row shape"):
        JoinedRows([first, np.zeros((2, 3, 3), np.uint8)])
