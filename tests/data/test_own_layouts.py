"""Own images as people keep them: class folders without splits (plain or .tar.gz) and a
labels file, from real CIFAR-10 JPEGs renamed into those layouts; the split each file gets
by its content, and the refusals."""

import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from image_finetune.config import DataParams
from image_finetune.data.canonical import load_split, read_sources
from image_finetune.errors import IngestError
from image_finetune.validation.facts import class_counts, dataset_facts
from tests.support import ingest_source

# Four CIFAR-10 classes under the names a user might give them.
RENAMED = {"cat": "kitty", "ship": "boat", "frog": "toad", "truck": "lorry"}
PARAMS = DataParams(
    source="folder",
    validation_fraction=0.15,
    test_fraction=0.15,
    min_validation_per_class=1,
    min_test_per_class=1,
)


def class_tree(small_folder: Path, out: Path, per_class: int, skip: int = 0) -> Path:
    """``out/<class>/<file>.jpg``: ``per_class`` real images of each renamed class (train's,
    then test's), after the first ``skip``."""
    for cifar, name in RENAMED.items():
        files = [
            f
            for split in ("train", "test")
            for f in sorted((small_folder / split / cifar).iterdir())
        ]
        (out / name).mkdir(parents=True, exist_ok=True)
        for file in files[skip : skip + per_class]:
            shutil.copy(file, out / name / f"{file.parent.parent.name}-{file.name}")
    return out


def where_each_file_went(data_dir: Path) -> dict[str, str]:
    return {
        name: split
        for split in ("train", "validation", "test")
        for name in read_sources(data_dir, split)
    }


@pytest.fixture(scope="module")
def tree(small_folder, tmp_path_factory) -> Path:
    """30 images of each of four classes in class folders, no split folders."""
    return class_tree(small_folder, tmp_path_factory.mktemp("photos"), 30)


@pytest.fixture(scope="module")
def ingested(tree, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ingested") / "data"
    return out, ingest_source(PARAMS, tree, out)


def test_class_folders_ingest_with_test_and_validation_held_out(ingested):
    out, manifest = ingested
    assert manifest["class_names"] == ["boat", "kitty", "lorry", "toad"]
    assert manifest["test_holdout"] == manifest["validation_holdout"] == "content-hash"
    assert manifest["params"]["test_fraction"] == 0.15
    per_class = {split: entry["per_class"] for split, entry in manifest["splits"].items()}
    for name in manifest["class_names"]:
        counts = [per_class[split][name] for split in ("train", "validation", "test")]
        assert sum(counts) == 30 and min(counts) >= 1, (name, counts)
    went = where_each_file_went(out)
    assert len(went) == 120 and all(name.split("/")[0] in RENAMED.values() for name in went)
    # Every split's labels are its files' folders.
    for split in ("train", "validation", "test"):
        labels = np.asarray(load_split(out, split).labels)
        folders = [name.split("/")[0] for name in read_sources(out, split)]
        assert [manifest["class_names"][i] for i in labels] == folders


def test_validation_judges_the_balance_of_the_classes_brought(ingested):
    out, manifest = ingested
    held = list(manifest["splits"]["test"]["per_class"].values())
    assert max(held) > 1.2 * np.mean(held)  # the split's own counts vary binomially...
    counts = class_counts(dataset_facts(out)[0], manifest)  # ...the classes brought do not
    assert set(counts["balance_ratio"]) == {1.0}
    assert counts.groupby("class_name")["count"].sum().to_dict() == dict.fromkeys(
        manifest["class_names"], 30
    )


def test_the_fractions_hold_roughly_over_the_whole_folder(ingested):
    _, manifest = ingested
    counts = {split: entry["count"] for split, entry in manifest["splits"].items()}
    # 120 images at 15% each: 18 expected, binomial sd about 4.
    assert 8 <= counts["test"] <= 30 and 8 <= counts["validation"] <= 30, counts


def test_a_rerun_and_a_tarball_give_the_same_split(tree, ingested, tmp_path):
    out, _ = ingested
    again = ingest_source(PARAMS, tree, tmp_path / "again")
    for file in sorted(p.name for p in out.iterdir()):
        assert (out / file).read_bytes() == (tmp_path / "again" / file).read_bytes(), file
    tarball = tmp_path / "photos.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tree, arcname="photos")  # wrapped in one folder, as archives often are
    from_tar = ingest_source(PARAMS, tarball, tmp_path / "tar")
    assert from_tar["splits"] == again["splits"]
    assert where_each_file_went(tmp_path / "tar") == where_each_file_went(out)


def test_adding_images_never_moves_an_earlier_one(small_folder, ingested, tmp_path):
    out, _ = ingested
    grown = class_tree(small_folder, tmp_path / "grown", 30)
    class_tree(small_folder, grown, 10, skip=30)  # ten more images of every class
    ingest_source(PARAMS, grown, tmp_path / "grown-data")
    before, after = where_each_file_went(out), where_each_file_went(tmp_path / "grown-data")
    assert len(after) == 160
    assert {name: after[name] for name in before} == before
    # Fewer images (the first 20 of each class): the ones kept stay where they were too.
    shrunk = class_tree(small_folder, tmp_path / "shrunk", 20)
    ingest_source(PARAMS, shrunk, tmp_path / "shrunk-data")
    kept = where_each_file_went(tmp_path / "shrunk-data")
    assert kept == {name: before[name] for name in kept}


def test_a_seed_gives_another_split(tree, ingested, tmp_path):
    out, _ = ingested
    ingest_source(PARAMS.model_copy(update={"seed": 7}), tree, tmp_path / "seven")
    assert where_each_file_went(tmp_path / "seven") != where_each_file_went(out)


def test_a_class_too_small_to_split_is_named(small_folder, tmp_path):
    tree = class_tree(small_folder, tmp_path / "photos", 30)
    for file in sorted((tree / "toad").iterdir())[1:]:
        file.unlink()
    with pytest.raises(IngestError, match="too few images to split") as caught:
        ingest_source(PARAMS, tree, tmp_path / "out")
    assert [
        p for p in caught.value.problems if not p.startswith("toad: none of its 1 images")
    ] == []
    assert len(caught.value.problems) == 2  # one image: in one split, missing from two


def test_the_test_minimum_is_a_loud_warning(tree, tmp_path, caplog):
    ingest_source(PARAMS.model_copy(update={"min_test_per_class": 25}), tree, tmp_path / "out")
    assert (
        "test holds fewer than data.min_test_per_class=25 images for 4 of 4 classes" in caplog.text
    )


def labels_tree(tree: Path, out: Path) -> Path:
    """The class tree's images in a folder structure of their own (no class folders), and a
    labels.csv beside them naming each image's class."""
    lines = ["source,path,label,annotator"]
    for number, image in enumerate(sorted(tree.glob("*/*.jpg"))):
        path = f"images/part{number // 50}/img{number:04d}.jpg"  # sorted as the class tree
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, out / path)
        lines.append(f"web,{path},{image.parent.name},ann")
    (out / "labels.csv").write_text("\n".join(lines) + "\n")
    return out / "labels.csv"


LABELS = PARAMS.model_copy(update={"source": "labels"})


def test_a_labels_file_splits_like_the_class_folders(tree, ingested, tmp_path):
    out, manifest = ingested
    labels = labels_tree(tree, tmp_path / "set")
    from_labels = ingest_source(LABELS, labels, tmp_path / "out")
    assert from_labels["class_names"] == manifest["class_names"]
    assert from_labels["source"]["kind"] == "labels"
    # Same images, same content: the same split, the same arrays.
    assert from_labels["splits"] == {
        split: {**entry, "sources_sha256": from_labels["splits"][split]["sources_sha256"]}
        for split, entry in manifest["splits"].items()
    }
    assert read_sources(tmp_path / "out", "test")[0].startswith("images/part")


def test_a_json_lines_file_with_a_split_column_keeps_its_splits(tree, tmp_path):
    labels = labels_tree(tree, tmp_path / "set")
    rows = [line.split(",") for line in labels.read_text().splitlines()[1:]]
    splits = ["test" if i % 5 == 0 else "train" for i in range(len(rows))]
    jsonl = labels.with_name("labels.jsonl")
    jsonl.write_text(
        "".join(
            json.dumps({"path": path, "label": label, "split": split, "score": 0.9}) + "\n"
            for (_, path, label, _), split in zip(rows, splits, strict=True)
        )
    )
    manifest = ingest_source(LABELS, jsonl, tmp_path / "out")
    assert manifest["splits"]["test"]["count"] == splits.count("test")
    assert manifest["validation_holdout"] == "stratified"  # held out of train, as folders
    assert "test_holdout" not in manifest and "test_fraction" not in manifest["params"]


def test_a_labels_file_is_refused_by_name(tree, tmp_path):
    labels = labels_tree(tree, tmp_path / "set")
    images = sorted((tmp_path / "set" / "images").glob("*/*.jpg"))
    outside = tmp_path / "secret.jpg"
    shutil.copy(images[0], outside)
    (tmp_path / "set" / "images" / "escape.jpg").symlink_to(outside)
    text = labels.read_text()
    first = images[0].relative_to(tmp_path / "set").as_posix()
    labels.write_text(
        text
        + "\n".join(
            [
                "web,images/nowhere.jpg,boat,x",  # a missing file
                "web,,kitty,x",  # a label with no image
                f"web,{first},toad,x",  # listed twice with two labels
                "web,../secret.jpg,boat,x",  # climbs out
                f"web,{outside},boat,x",  # absolute
                "web,images/escape.jpg,boat,x",  # a link leading out
            ]
        )
        + "\n"
    )
    with pytest.raises(IngestError) as caught:
        ingest_source(LABELS, labels, tmp_path / "out")
    problems = "\n".join(caught.value.problems)
    assert caught.value.exit_code == 3
    assert "images/nowhere.jpg: no such file" in problems
    assert "label 'kitty' with no image path" in problems
    assert f"{first}: listed twice with two labels" in problems
    assert "../secret.jpg: climbs out of the labels file's folder" in problems
    assert f"{outside}: an absolute path" in problems
    assert not (tmp_path / "out").exists()
    # The link is found once the lines a person can see are fixed.
    labels.write_text(text + "web,images/escape.jpg,boat,x\n")
    with pytest.raises(IngestError, match="escape.jpg: a link leading out of the labels"):
        ingest_source(LABELS, labels, tmp_path / "out")


def test_hostile_lines_and_files_are_refused_without_a_hang(tree, tmp_path):
    labels = labels_tree(tree, tmp_path / "set")
    jsonl = labels.with_name("labels.jsonl")
    jsonl.write_text(
        "[" * 100000
        + "]" * 100000
        + "\n"
        + json.dumps({"path": "a\u0000b.jpg", "label": "boat"})
        + "\n"
    )
    with pytest.raises(IngestError) as caught:
        ingest_source(LABELS, jsonl, tmp_path / "out")
    assert caught.value.problems == [
        "line 1: not JSON (RecursionError)",
        "line 2: 'a\\x00b.jpg': the path has control characters",
    ]
    os.mkfifo(tmp_path / "set" / "images" / "fifo.jpg")
    (tmp_path / "set" / "images" / "loop.jpg").symlink_to("loop.jpg")
    labels.write_text(
        labels.read_text() + "web,images/fifo.jpg,boat,x\nweb,images/loop.jpg,boat,x\n"
    )
    with pytest.raises(IngestError, match="bad images in the labels file") as caught:
        ingest_source(LABELS, labels, tmp_path / "out")
    assert sorted(p.split(":")[1].strip() for p in caught.value.problems) == [
        "images/fifo.jpg",
        "images/loop.jpg",
    ], caught.value.problems


def test_a_missing_labels_file_and_a_split_label_without_images(tree, tmp_path):
    with pytest.raises(IngestError, match="labels file not found"):
        ingest_source(LABELS, tmp_path / "nothing.csv", tmp_path / "out")
    labels = labels_tree(tree, tmp_path / "set")
    lines = labels.read_text().splitlines()
    with_split = [lines[0] + ",split"] + [
        line + ("," + ("test" if "lorry" not in line and i % 4 == 0 else "train"))
        for i, line in enumerate(lines[1:])
    ]
    labels.write_text("\n".join(with_split) + "\n")
    with pytest.raises(IngestError, match="labels are inconsistent") as caught:
        ingest_source(LABELS, labels, tmp_path / "out")
    assert caught.value.problems == ["test/lorry: no images with this label"]


def test_loose_images_get_one_message_naming_the_layouts(tree, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    for image in sorted(tree.glob("*/*.jpg")):
        shutil.copy(image, loose / f"{image.parent.name}-{image.name}")
    with pytest.raises(IngestError) as caught:
        ingest_source(PARAMS, loose, tmp_path / "out")
    message = str(caught.value)
    assert caught.value.exit_code == 3
    assert caught.value.problems == [] and len(message.splitlines()) == 5, message
    assert "its 120 files are in none of the accepted layouts" in message
    for layout in ("split/class/image", "class/image", "a labels file"):
        assert layout in message
    assert "It looks closest to class folders: the files lie loose" in message


def test_a_mix_of_layouts_gets_one_message(small_folder, tree, tmp_path):
    mixed = shutil.copytree(small_folder, tmp_path / "mixed")
    for image in sorted((tree / "boat").iterdir())[:3]:
        (mixed / "extra").mkdir(exist_ok=True)
        shutil.copy(image, mixed / "extra" / image.name)
    with pytest.raises(IngestError) as caught:
        ingest_source(PARAMS, mixed, tmp_path / "out")
    message = str(caught.value)
    assert len(message.splitlines()) == 5, message
    assert "It looks closest to split folders: 400 of the 403 files fit it" in message
    assert "extra/" in message


def test_class_folders_a_level_too_deep_get_one_message(tree, tmp_path):
    deep = tmp_path / "deep"
    for year, names in (("2023", ["boat", "kitty"]), ("2024", ["lorry", "toad"])):
        for name in names:
            shutil.copytree(tree / name, deep / year / "phone" / name)
    with pytest.raises(IngestError) as caught:
        ingest_source(PARAMS, deep, tmp_path / "out")
    message = str(caught.value)
    assert len(message.splitlines()) == 5, message
    assert "It looks closest to class folders: the images sit 3 folders deep" in message


def test_an_empty_class_folder_and_an_empty_folder_are_named(tree, tmp_path):
    photos = shutil.copytree(tree, tmp_path / "photos")
    for image in (photos / "toad").iterdir():
        image.unlink()
    with pytest.raises(IngestError, match="class folders are inconsistent") as caught:
        ingest_source(PARAMS, photos, tmp_path / "out")
    assert caught.value.problems == ["toad: empty class (no images)"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="empty: no images found; the accepted layouts are"):
        ingest_source(PARAMS, tmp_path / "empty", tmp_path / "out")
