"""Ingestion of real CIFAR-10 images, and every kind of bad input it must reject."""

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from image_finetune.config import DataParams
from image_finetune.data.canonical import load_split, read_manifest
from image_finetune.errors import IngestError
from image_finetune.validation.facts import dataset_facts
from tests.support import copy_tree, ingest_source, jpeg_bytes

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def params(**overrides) -> DataParams:
    return DataParams(**{"validation_fraction": 0.2, **overrides})


def first_file(folder: Path, split: str = "train", cls: str = "cat") -> Path:
    return sorted((folder / split / cls).iterdir())[0]


def test_validation_below_the_minimum_is_a_loud_warning(small_folder, tmp_path, caplog):
    manifest = ingest_source(params(min_validation_per_class=1), small_folder, tmp_path / "a")
    assert set(manifest["splits"]["validation"]["per_class"].values()) == {6}
    assert "fewer than data.min_validation_per_class" not in caplog.text
    ingest_source(params(), small_folder, tmp_path / "b")
    assert (
        "fewer than data.min_validation_per_class=20 images for 10 of 10 classes "
        "(airplane: 10" in caplog.text
    )


def test_real_subset_ingests_with_a_stratified_validation_split(small_folder, tmp_path):
    manifest = ingest_source(params(), small_folder, tmp_path / "out")
    assert manifest["class_names"] == CLASSES
    counts = {s: v["count"] for s, v in manifest["splits"].items()}
    # 20% of 30 is 6, under the minimum of 20, which a third of the class caps at 10.
    assert counts == {"train": 200, "validation": 100, "test": 100}
    assert set(manifest["splits"]["validation"]["per_class"].values()) == {10}
    train = load_split(tmp_path / "out", "train")
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (32, 32, 3)
    assert train.labels.dtype == np.int64
    assert read_manifest(tmp_path / "out")["source"]["kind"] == "folder"


def test_ingest_is_byte_identical_for_the_same_source_and_params(small_folder, tmp_path):
    ingest_source(params(), small_folder, tmp_path / "a")
    ingest_source(params(), small_folder, tmp_path / "b")
    for name in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    ingest_source(params(seed=1), small_folder, tmp_path / "c")
    assert (tmp_path / "a" / "validation_labels.npy").read_bytes() != (
        tmp_path / "c" / "validation_labels.npy"
    ).read_bytes() or (tmp_path / "a" / "validation_images.npy").read_bytes() != (
        tmp_path / "c" / "validation_images.npy"
    ).read_bytes()


def test_tarball_and_directory_give_the_same_arrays(small_folder, tmp_path):
    tarball = tmp_path / "subset.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        for split in ("train", "test"):
            archive.add(small_folder / split, arcname=split)
    from_dir = ingest_source(params(), small_folder, tmp_path / "dir")
    from_tar = ingest_source(params(), tarball, tmp_path / "tar")
    assert from_dir["splits"] == from_tar["splits"]


def expect_failure(folder: Path, tmp_path: Path, pattern: str, **overrides) -> IngestError:
    out = tmp_path / "out"
    with pytest.raises(IngestError, match=pattern) as caught:
        ingest_source(params(**overrides), folder, out)
    assert not out.exists(), "a failed ingest must leave no partial output"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return caught.value


def test_corrupt_jpeg_is_named(small_folder, tmp_path):
    folder = copy_tree(small_folder, tmp_path / "src")
    victim = first_file(folder)
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 3])
    error = expect_failure(folder, tmp_path, "bad files")
    assert error.problems == [
        f"train/cat/{victim.name}: corrupt or truncated image "
        + error.problems[0].split("image ", 1)[1]
    ]


def test_non_image_file_is_named(small_folder, tmp_path):
    folder = copy_tree(small_folder, tmp_path / "src")
    (folder / "train" / "dog" / "notes.txt").write_text("hello")
    (folder / "train" / "dog" / "fake.jpg").write_text("not really a jpeg")
    error = expect_failure(folder, tmp_path, "bad files")
    assert sorted(error.problems) == [
        "train/dog/fake.jpg: not an image file",
        "train/dog/notes.txt: not an image file (expected .png, .jpg or .jpeg)",
    ]


def test_wrong_size_is_rejected_or_resized(small_folder, tmp_path):
    folder = copy_tree(small_folder, tmp_path / "src")
    victim = first_file(folder, "test", "ship")
    image = np.asarray(Image.open(victim))[:31]
    victim.write_bytes(jpeg_bytes(image))
    error = expect_failure(folder, tmp_path, "bad files")
    assert error.problems == [
        f"test/ship/{victim.name}: size 31x32, expected 32x32 "
        "(set data.on_wrong_size: resize or center_crop to accept it)"
    ]
    manifest = ingest_source(params(on_wrong_size="resize"), folder, tmp_path / "resized")
    assert manifest["splits"]["test"]["count"] == 100


def test_unknown_missing_and_empty_class_folders(small_folder, tmp_path):
    folder = copy_tree(small_folder, tmp_path / "src")
    (folder / "test" / "unicorn").mkdir()
    first_file(folder, "test", "frog").rename(folder / "test" / "unicorn" / "0.jpg")
    for file in (folder / "test" / "horse").iterdir():
        file.unlink()
    (folder / "test" / "horse").rmdir()
    for file in (folder / "test" / "deer").iterdir():
        file.unlink()
    (folder / "test" / "deer" / ".keep").write_text("")
    error = expect_failure(folder, tmp_path, "class folders are inconsistent")
    assert sorted(error.problems) == [
        "test/deer: empty class (no images)",
        "test/horse: missing class folder",
        "test/unicorn: unknown class (not among train's classes)",
    ]


def test_many_problems_are_listed_up_to_twenty_with_a_count(small_folder, tmp_path):
    folder = copy_tree(small_folder, tmp_path / "src")
    for index in range(25):
        (folder / "train" / "cat" / f"junk{index:02d}.jpg").write_bytes(b"\x00" * 10)
    error = expect_failure(folder, tmp_path, r"\(25 problems\)")
    assert "... and 5 more" in str(error)


def test_truncated_archive_is_reported(small_folder, tmp_path):
    tarball = tmp_path / "subset.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(small_folder / "train", arcname="train")
    tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    expect_failure(tarball, tmp_path, "truncated or unreadable archive")


def test_missing_source_is_reported(tmp_path):
    # An explicit folder source: never replaced by a download (auto would fetch tfds).
    expect_failure(tmp_path / "nowhere.tar.gz", tmp_path, "data source not found", source="folder")


def _real_arrays(small_folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for index, cls in enumerate(CLASSES):
        for file in sorted((small_folder / split / cls).iterdir())[:5]:
            images.append(np.asarray(Image.open(file).convert("RGB")))
            labels.append(index)
    return np.stack(images), np.array(labels)


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def test_official_python_archive(small_folder, tmp_path):
    train, test = _real_arrays(small_folder, "train"), _real_arrays(small_folder, "test")
    tarball = tmp_path / "cifar-10-python.tar.gz"
    to_rows = lambda images: images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # noqa: E731
    with tarfile.open(tarball, "w:gz") as archive:
        for i in range(1, 6):
            part = slice(i - 1, None, 5)
            batch = {b"data": to_rows(train[0][part]), b"labels": train[1][part].tolist()}
            _add(archive, f"cifar-10-batches-py/data_batch_{i}", pickle.dumps(batch))
        _add(
            archive,
            "cifar-10-batches-py/test_batch",
            pickle.dumps({b"data": to_rows(test[0]), b"labels": test[1].tolist()}),
        )
        _add(
            archive,
            "cifar-10-batches-py/batches.meta",
            pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}),
        )
    manifest = ingest_source(params(source="cifar-python"), tarball, tmp_path / "out")
    assert manifest["class_names"] == CLASSES
    test_split = load_split(tmp_path / "out", "test")
    assert np.array_equal(test_split.images, test[0])
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["validation"]["count"] == 50


def test_official_binary_archive_and_its_truncation(small_folder, tmp_path):
    train, test = _real_arrays(small_folder, "train"), _real_arrays(small_folder, "test")

    def records(images, labels):
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
        return np.concatenate([labels[:, None].astype(np.uint8), rows], axis=1).tobytes()

    def build(path: Path, truncate: bool) -> Path:
        with tarfile.open(path, "w:gz") as archive:
            for i in range(1, 6):
                part = slice(i - 1, None, 5)
                data = records(train[0][part], train[1][part])
                _add(
                    archive,
                    f"cifar-10-batches-bin/data_batch_{i}.bin",
                    data[:-7] if truncate and i == 3 else data,
                )
            _add(archive, "cifar-10-batches-bin/test_batch.bin", records(*test))
            _add(archive, "cifar-10-batches-bin/batches.meta.txt", "\n".join(CLASSES).encode())
        return path

    good = build(tmp_path / "good.tar.gz", truncate=False)
    ingest_source(params(source="cifar-binary"), good, tmp_path / "out")
    assert np.array_equal(load_split(tmp_path / "out", "test").labels, test[1])
    bad = build(tmp_path / "bad.tar.gz", truncate=True)
    with pytest.raises(IngestError, match="train batches are truncated"):
        ingest_source(params(source="cifar-binary"), bad, tmp_path / "out2")
    with pytest.raises(IngestError, match="not a CIFAR-10 archive"):
        ingest_source(params(source="cifar-python"), good, tmp_path / "out3")


def test_sharded_ingest_holds_the_same_data_and_facts(small_folder, tmp_path):
    single = ingest_source(params(), small_folder, tmp_path / "single")
    sharded = ingest_source(params(shard_size=64), small_folder, tmp_path / "sharded")
    for split, entry in sharded["splits"].items():
        assert [s["rows"] for s in entry.pop("shards")] == [
            min(64, entry["count"] - start) for start in range(0, entry["count"], 64)
        ]
        assert entry == single["splits"][split]
        a, b = load_split(tmp_path / "single", split), load_split(tmp_path / "sharded", split)
        np.testing.assert_array_equal(np.asarray(b.images), a.images)
        np.testing.assert_array_equal(np.asarray(b.labels), a.labels)
    assert {k: v for k, v in sharded.items() if k != "splits"} == {
        **{k: v for k, v in single.items() if k != "splits"},
        "shard_size": 64,
    }
    for expected, got in zip(
        dataset_facts(tmp_path / "single"), dataset_facts(tmp_path / "sharded"), strict=True
    ):
        pd.testing.assert_frame_equal(got, expected)
