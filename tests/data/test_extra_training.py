"""data.extra_paths: labelled images (a feedback export) join the train split, and only it;
without them the canonical dataset is what it always was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from image_finetune.config import DataParams
from image_finetune.data.canonical import load_split
from image_finetune.errors import IngestError
from tests.support import ingest_source


def params(**overrides) -> DataParams:
    return DataParams(**{"validation_fraction": 0.2, "min_validation_per_class": 1, **overrides})


def export_like(small_folder: Path, out: Path) -> Path:
    """A feedback export's shape: class/file images (real ones) and a record at the top."""
    for name, count in (("cat", 3), ("ship", 2)):
        (out / name).mkdir(parents=True)
        for source in sorted((small_folder / "test" / name).iterdir())[:count]:
            shutil.copy(source, out / name / f"feedback-{source.name}")
    (out / "export.json").write_text(json.dumps({"images": 5}))
    return out


def test_extra_images_join_train_and_nothing_else(small_folder, tmp_path):
    plain = ingest_source(params(), small_folder, tmp_path / "plain")
    extra = export_like(small_folder, tmp_path / "export")
    more = ingest_source(params(extra_paths=[str(extra)]), small_folder, tmp_path / "more")
    counts = {
        split: (plain["splits"][split]["count"], more["splits"][split]["count"])
        for split in ("train", "validation", "test")
    }
    assert counts["train"][1] == counts["train"][0] + 5
    assert counts["validation"][0] == counts["validation"][1]
    assert counts["test"][0] == counts["test"][1]
    assert more["extra_training"]["images"] == 5
    assert more["extra_training"]["per_class"]["cat"] == 3
    train = load_split(tmp_path / "more", "train")
    cat = more["class_names"].index("cat")
    assert (
        list(np.asarray(train.labels)[-5:]) == [cat] * 3 + [more["class_names"].index("ship")] * 2
    )
    assert "extra_training" not in plain and "extra_paths" not in plain["params"]


def test_bad_extra_images_are_named(small_folder, tmp_path):
    extra = export_like(small_folder, tmp_path / "export")
    (extra / "unicorn").mkdir()
    shutil.copy(next((extra / "cat").iterdir()), extra / "unicorn" / "u.jpg")
    (extra / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(IngestError) as caught:
        ingest_source(params(extra_paths=[str(extra)]), small_folder, tmp_path / "out")
    text = str(caught.value) + "\n".join(caught.value.problems)
    assert "unknown class 'unicorn'" in text and "broken.jpg" in text
