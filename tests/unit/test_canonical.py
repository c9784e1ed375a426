"""The canonical format: stratified seeded splits, hashes, atomic writes, shards."""

import json

import numpy as np
import pytest

from image_finetune.atomic import atomic_directory
from image_finetune.data.canonical import (
    held_out_count,
    load_split,
    read_manifest,
    split_stratified,
    verify_shards,
    write_dataset,
)
from image_finetune.data.rows import ShardedRows
from image_finetune.errors import CorruptInputError, MissingInputError
from image_finetune.hashing import sha256_array, sha256_file


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), [100, 90, 80, 70, 60, 50, 40, 30, 20, 10])
    keep, held = split_stratified(labels, 0.1, seed=7)
    assert set(keep).isdisjoint(held)
    assert len(keep) + len(held) == len(labels)
    held_counts = np.bincount(labels[held], minlength=10)
    assert held_counts.tolist() == [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    again_keep, again_held = split_stratified(labels, 0.1, seed=7)
    assert np.array_equal(held, again_held) and np.array_equal(keep, again_keep)
    assert not np.array_equal(held, split_stratified(labels, 0.1, seed=8)[1])


@pytest.mark.parametrize(
    "class_size,expected", [(5000, 500), (200, 20), (80, 20), (30, 10), (6, 2), (2, 1), (1, 0)]
)
def test_validation_gets_the_minimum_per_class_but_never_over_a_third(class_size, expected):
    assert held_out_count(class_size, 0.1, minimum=20) == expected


def test_split_holds_the_minimum_per_class():
    labels = np.repeat(np.arange(3), [80, 200, 30])
    _, held = split_stratified(labels, 0.1, seed=0, minimum=20)
    assert np.bincount(labels[held]).tolist() == [20, 20, 10]


def test_split_holds_out_at_least_one_and_keeps_at_least_one():
    labels = np.array([0, 0, 1, 1, 1, 2])
    keep, held = split_stratified(labels, 0.01, seed=0)
    assert set(labels[held]) == {0, 1}
    assert set(labels[keep]) == {0, 1, 2}


def test_sha256_array_sees_content_shape_and_dtype():
    a = np.zeros((2, 3), dtype=np.uint8)
    assert sha256_array(a) == sha256_array(a.copy())
    assert sha256_array(a) != sha256_array(a.reshape(3, 2))
    assert sha256_array(a) != sha256_array(a.astype(np.int64))
    b = a.copy()
    b[0, 0] = 1
    assert sha256_array(a) != sha256_array(b)


def test_atomic_directory_keeps_the_old_output_when_the_block_fails(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "a.txt").write_text("second")
        raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_and_load_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 1, 0], dtype=np.int64)
    manifest = write_dataset(tmp_path / "d", ["a", "b"], {"train": (images, labels)}, {"x": 1})
    assert manifest["splits"]["train"]["per_class"] == {"a": 3, "b": 3}
    assert read_manifest(tmp_path / "d") == manifest
    loaded = load_split(tmp_path / "d", "train")
    assert np.array_equal(loaded.images, images) and np.array_equal(loaded.labels, labels)
    with pytest.raises(MissingInputError, match="split 'test' is missing"):
        load_split(tmp_path / "d", "test")
    with pytest.raises(MissingInputError, match="run the ingest step first"):
        read_manifest(tmp_path / "nothing")


IMAGES = np.random.default_rng(1).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
LABELS = np.array([0, 1, 0, 1, 1, 0, 0, 1, 1, 0], dtype=np.int64)


def write_sharded(folder, shard_size=4) -> dict:
    return write_dataset(
        folder,
        ["a", "b"],
        {"train": (IMAGES, LABELS), "test": (IMAGES[:3], LABELS[:3])},
        {},
        shard_size=shard_size,
    )


def test_sharded_round_trip_lists_every_shard_with_its_hash(tmp_path):
    manifest = write_sharded(tmp_path / "d")
    shards = manifest["splits"]["train"]["shards"]
    assert [s["rows"] for s in shards] == [4, 4, 2]
    assert [s["images"]["file"] for s in shards] == [
        "train/images-00000.npy",
        "train/images-00001.npy",
        "train/images-00002.npy",
    ]
    for shard in shards:
        for kind in ("images", "labels"):
            assert sha256_file(tmp_path / "d" / shard[kind]["file"]) == shard[kind]["sha256"]
    assert verify_shards(tmp_path / "d") == 8
    loaded = load_split(tmp_path / "d", "train")
    assert isinstance(loaded.images, ShardedRows)
    np.testing.assert_array_equal(loaded.images[:], IMAGES)
    np.testing.assert_array_equal(np.asarray(loaded.labels), LABELS)
    in_memory = load_split(tmp_path / "d", "train", mmap=False)
    np.testing.assert_array_equal(in_memory.images, IMAGES)


def test_sharded_and_single_files_hash_the_same_content(tmp_path):
    sharded = write_sharded(tmp_path / "sharded")["splits"]["train"]
    single = write_sharded(tmp_path / "single", shard_size=None)["splits"]["train"]
    assert "shards" not in single
    assert sharded.pop("shards") and sharded == single
    assert single["images_sha256"] == sha256_array(IMAGES)
    assert np.load(tmp_path / "single" / "train_images.npy").tobytes() == IMAGES.tobytes()


def test_a_changed_shard_is_refused_by_its_hash(tmp_path):
    write_sharded(tmp_path / "d")
    shard = tmp_path / "d" / "train" / "images-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptInputError, match="images-00001.npy: sha256 differs"):
        verify_shards(tmp_path / "d")


def test_a_missing_or_truncated_shard_is_named(tmp_path):
    write_sharded(tmp_path / "d")
    np.save(tmp_path / "d" / "train" / "labels-00002.npy", LABELS[:1])
    with pytest.raises(CorruptInputError, match="labels-00002.npy: 1 rows .* says 2 rows"):
        load_split(tmp_path / "d", "train")
    (tmp_path / "d" / "train" / "images-00000.npy").unlink()
    with pytest.raises(MissingInputError, match="images-00000.npy: shard of split 'train'"):
        load_split(tmp_path / "d", "train")
    with pytest.raises(MissingInputError, match="images-00000.npy: shard is missing"):
        verify_shards(tmp_path / "d")
    (tmp_path / "d" / "test" / "images-00000.npy").write_bytes(b"not numpy")
    with pytest.raises(CorruptInputError, match="not a readable .npy shard"):
        load_split(tmp_path / "d", "test")


def test_the_manifest_records_the_shard_size_only_where_set(tmp_path):
    write_sharded(tmp_path / "sharded")
    write_sharded(tmp_path / "single", shard_size=None)
    assert json.loads((tmp_path / "sharded" / "manifest.json").read_text())["shard_size"] == 4
    assert "shard_size" not in json.loads((tmp_path / "single" / "manifest.json").read_text())
