"""The validation suites on real CIFAR-10 data and on deliberately broken copies of it."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from image_finetune.config import DataParams, ValidateParams
from image_finetune.data.canonical import load_split, read_manifest, write_dataset
from image_finetune.errors import DataValidationError
from image_finetune.validation.facts import dataset_facts
from tests.support import ingest_source, validate_with


@pytest.fixture(scope="module")
def clean(small_folder, tmp_path_factory) -> Path:
    """The real subset in canonical form."""
    out = tmp_path_factory.mktemp("canonical") / "data"
    ingest_source(DataParams(validation_fraction=0.2), small_folder, out)
    return out


def arrays(data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        s: (np.array(load_split(data_dir, s).images), np.array(load_split(data_dir, s).labels))
        for s in ("train", "validation", "test")
    }


def rewrite(data_dir: Path, target: Path, splits: dict, keep_manifest_counts: bool = False):
    """Write broken arrays as a canonical dataset (manifest counts follow the arrays)."""
    manifest = read_manifest(data_dir)
    extra = {
        k: v
        for k, v in manifest.items()
        if k not in ("class_names", "image_shape", "splits", "format")
    }
    names = manifest["class_names"]
    if keep_manifest_counts:
        write_dataset(target, names, splits, extra)
        updated = read_manifest(target)
        updated["splits"] = manifest["splits"]
        (target / "manifest.json").write_text(json.dumps(updated))
        return target
    safe = {s: (i, np.clip(lab, 0, len(names) - 1)) for s, (i, lab) in splits.items()}
    write_dataset(target, names, safe, extra)
    for split, (_, labels) in splits.items():
        np.save(target / f"{split}_labels.npy", labels)
    return target


def failures(data_dir: Path, tmp_path: Path, **params) -> list[dict]:
    with pytest.raises(DataValidationError) as caught:
        validate_with(data_dir, ValidateParams(**params), tmp_path / "report")
    result = json.loads((tmp_path / "report" / "result.json").read_text())
    assert result["success"] is False
    assert (tmp_path / "report" / "data_docs" / "index.html").exists()
    assert str(caught.value).startswith("data validation FAILED")
    return result["failures"]


def descriptions(found: list[dict]) -> list[str]:
    return sorted(f["description"] for f in found)


def test_clean_real_data_passes_and_writes_data_docs(clean, tmp_path):
    report = validate_with(clean, ValidateParams(), tmp_path / "report")
    assert report.success and not report.failures
    assert report.evaluated >= 14
    result = json.loads((tmp_path / "report" / "result.json").read_text())
    assert result["success"] is True and result["images"] == 400
    docs = tmp_path / "report" / "data_docs"
    html = (docs / "index.html").read_text()
    pages = sorted(docs.glob("validations/**/*.html"))
    assert len(pages) == 3  # one validation result per fact table, each linked from the index
    for page in pages:
        assert page.relative_to(docs).as_posix() in html
        assert "Succeeded" in page.read_text() or "success" in page.read_text().lower()
    for suite in ("images_suite", "class_counts_suite", "channel_stats_suite"):
        assert suite in html


def test_label_outside_the_class_set(clean, tmp_path):
    splits = arrays(clean)
    splits["train"][1][[3, 7]] = 10
    found = failures(rewrite(clean, tmp_path / "d", splits), tmp_path)
    label = [f for f in found if f["description"] == "label within the 10 classes"]
    assert label and label[0]["unexpected_count"] == 2
    assert label[0]["examples"] == ["train/3", "train/7"]


def test_test_image_copied_into_train_is_leakage(clean, tmp_path):
    splits = arrays(clean)
    splits["train"][0][0] = splits["test"][0][5]
    found = failures(rewrite(clean, tmp_path / "d", splits), tmp_path)
    assert descriptions(found) == ["no image shared between train/validation and test"]
    assert sorted(found[0]["examples"]) == ["test/5", "train/0"]


def test_constant_image(clean, tmp_path):
    splits = arrays(clean)
    splits["validation"][0][4] = 128
    found = failures(rewrite(clean, tmp_path / "d", splits), tmp_path)
    assert descriptions(found) == ["not constant (pixel std >= 2.0)"]
    assert found[0]["examples"] == ["validation/4"]


def test_wrong_shape_images(clean, tmp_path):
    splits = arrays(clean)
    splits["test"] = (splits["test"][0][:, :31], splits["test"][1])
    found = failures(rewrite(clean, tmp_path / "d", splits), tmp_path)
    assert "height is 32" in descriptions(found)


def test_empty_class(clean, tmp_path):
    splits = arrays(clean)
    images, labels = splits["train"]
    keep = labels != 4
    splits["train"] = (images[keep], labels[keep])
    found = failures(rewrite(clean, tmp_path / "d", splits), tmp_path)
    assert "every class has >= 1 images" in descriptions(found)
    assert any("train/deer" in str(f["examples"]) for f in found)


def test_ten_times_class_imbalance(clean, tmp_path):
    splits = arrays(clean)
    images, labels = splits["train"]
    cats = np.flatnonzero(labels == 3)
    extra = np.repeat(cats, 9)  # 10x the cats
    rng = np.random.default_rng(0)
    # Distinct pixels, so the imbalance is not also a duplicate problem.
    noise = rng.integers(0, 3, (len(extra), *images.shape[1:]), dtype=np.uint8)
    splits["train"] = (
        np.concatenate([images, images[extra] ^ noise]),
        np.concatenate([labels, labels[extra]]),
    )
    found = failures(rewrite(clean, tmp_path / "d", splits), tmp_path)
    assert descriptions(found) == ["class balance within +-20% of the split mean"]


def test_counts_that_disagree_with_the_manifest(clean, tmp_path):
    splits = arrays(clean)
    splits["test"] = (splits["test"][0][:-3], splits["test"][1][:-3])
    found = failures(rewrite(clean, tmp_path / "d", splits, keep_manifest_counts=True), tmp_path)
    assert "counts equal the manifest's" in descriptions(found)


def test_duplicates_within_a_split_warn_without_failing(clean, tmp_path):
    splits = arrays(clean)
    splits["train"][0][1] = splits["train"][0][0]
    report = validate_with(
        rewrite(clean, tmp_path / "d", splits), ValidateParams(), tmp_path / "report"
    )
    assert report.success
    assert [w.description for w in report.warnings] == ["no exact duplicates within a split"]


def test_implausible_channel_statistics(clean, tmp_path):
    splits = arrays(clean)
    splits["train"] = ((splits["train"][0] // 4), splits["train"][1])  # far too dark
    found = failures(rewrite(clean, tmp_path / "d", splits), tmp_path)
    assert "channel mean in [0.3, 0.7]" in descriptions(found)


def test_missing_dataset_is_a_clear_error(tmp_path):
    from image_finetune.errors import MissingInputError

    with pytest.raises(MissingInputError, match="run the ingest step first"):
        validate_with(tmp_path / "none", ValidateParams(), tmp_path / "r")
    shutil.rmtree(tmp_path / "r", ignore_errors=True)


def test_failures_name_the_files_they_came_from(small_folder, tmp_path):
    from PIL import Image

    from tests.support import copy_tree

    folder = copy_tree(small_folder, tmp_path / "tree")
    victim = sorted((folder / "test" / "frog").iterdir())[3]
    Image.new("RGB", (32, 32), (90, 90, 90)).save(victim, format="JPEG")
    data = tmp_path / "data"
    ingest_source(DataParams(validation_fraction=0.2), folder, data)
    [found] = failures(data, tmp_path)
    assert found["description"] == "not constant (pixel std >= 2.0)"
    assert found["examples"] == [f"test/frog/{victim.name}"]


def whole_array_facts(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The facts computed the plain way, each split's arrays whole in memory."""
    images_rows, channel_rows = [], []
    for split, (images, labels) in arrays(data_dir).items():
        flat = images.reshape(len(images), -1).astype(np.float32)
        images_rows.append(
            pd.DataFrame(
                {
                    "split": split,
                    "label": labels,
                    "min": flat.min(1).astype(np.float64),
                    "max": flat.max(1).astype(np.float64),
                    "mean": flat.mean(1).astype(np.float64),
                    "std": flat.std(1).astype(np.float64),
                    "sha256": [hashlib.sha256(i.tobytes()).hexdigest()[:32] for i in images],
                }
            )
        )
        pixels = images.astype(np.float64) / 255.0
        for c, channel in enumerate(("red", "green", "blue")):
            channel_rows.append(
                {
                    "split": split,
                    "channel": channel,
                    "mean": pixels[..., c].mean(),
                    "std": pixels[..., c].std(),
                }
            )
    return pd.concat(images_rows, ignore_index=True), pd.DataFrame(channel_rows)


@pytest.mark.parametrize("chunk_rows", [4096, 7])
def test_streamed_facts_equal_the_whole_array_computation(clean, chunk_rows):
    facts, channels = dataset_facts(clean, chunk_rows)
    expected_facts, expected_channels = whole_array_facts(clean)
    pd.testing.assert_frame_equal(
        facts[expected_facts.columns], expected_facts, check_exact=False, rtol=1e-6
    )
    assert facts["sha256"].tolist() == expected_facts["sha256"].tolist()
    pd.testing.assert_frame_equal(channels, expected_channels, check_exact=False, rtol=1e-9)
    assert not facts["crosses_test_boundary"].any()
