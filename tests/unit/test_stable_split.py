"""The split a file gets by its content (data.stable_split) and where a path sits in the
accepted folder layouts (data.layouts): pure functions, checked on many made-up files."""

import hashlib
from pathlib import PurePosixPath

import numpy as np

from image_finetune.config import DataParams
from image_finetune.data.layouts import CLASS_FOLDERS, SPLIT_FOLDERS, UNSPLIT, place
from image_finetune.data.stable_split import split_by_content, split_of
from image_finetune.locate import choose_data
from image_finetune.steps.locate_sources import data_record


def hashes(count: int, start: int = 0) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + count)]


def test_a_files_split_is_its_own_whatever_else_is_there():
    files = hashes(2000)
    alone = {h: split_of(h, 42, 0.1, 0.2) for h in files}
    grown = hashes(3000, -500) + files[::-1]  # more files, in another order
    rows = split_by_content(grown, 42, 0.1, 0.2)
    together = {grown[i]: split for split, indices in rows.items() for i in indices}
    assert {h: together[h] for h in files} == alone


def test_the_fractions_hold_and_the_seed_reshuffles():
    files = hashes(20000)
    rows = split_by_content(files, 42, 0.1, 0.2)
    share = {split: len(indices) / len(files) for split, indices in rows.items()}
    assert abs(share["test"] - 0.1) < 0.01 and abs(share["validation"] - 0.2) < 0.01
    assert sorted(np.concatenate(list(rows.values()))) == list(range(len(files)))
    other = split_by_content(files, 7, 0.1, 0.2)
    assert not np.array_equal(rows["test"], other["test"])


def test_a_larger_test_fraction_only_takes_more_files_into_test():
    files = hashes(5000)
    small, large = (set(split_by_content(files, 1, f, 0.1)["test"]) for f in (0.1, 0.2))
    assert small < large


def test_where_paths_sit_in_the_layouts():
    def where(path):
        found = place(PurePosixPath(path))
        return found and (found.layout, found.root, found.split, found.class_name, found.name)

    assert where("train/cat/1.jpg") == (SPLIT_FOLDERS, None, "train", "cat", "train/cat/1.jpg")
    assert where("cifar/test/cat/1.jpg") == (
        SPLIT_FOLDERS,
        "cifar",
        "test",
        "cat",
        "test/cat/1.jpg",
    )
    assert where("boat/1.jpg") == (CLASS_FOLDERS, None, UNSPLIT, "boat", "boat/1.jpg")
    assert where("photos/boat/1.jpg") == (CLASS_FOLDERS, "photos", UNSPLIT, "boat", "boat/1.jpg")
    for nowhere in ("1.jpg", "train/1.jpg", "photos/train/1.jpg", "a/b/c/1.jpg", "a/b/c/d/1.jpg"):
        assert where(nowhere) is None, nowhere


def test_a_labels_file_is_chosen_and_recorded_by_its_images(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"one")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nimg/a.jpg,boat\n")
    data = choose_data(DataParams(path=str(labels)), tmp_path, {})
    assert data.source == "labels"
    first = data_record(data)
    (tmp_path / "img" / "a.jpg").write_bytes(b"two")  # the image changed, the list did not
    assert data_record(data)["sha256"] != first["sha256"]
