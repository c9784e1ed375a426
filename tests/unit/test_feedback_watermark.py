"""New labels since the last completed retraining: the feedback store's watermark, the export's
record of how many of its images are new, what the monitor step counts against ``min_labels``,
and the watermark moving only when a retraining given the export ran to its end (locally:
``monitor --retrain``'s ``dvc exp run`` in a real, tiny DVC project)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from image_finetune.errors import MissingInputError
from image_finetune.monitoring.feedback_store import (
    EXPORT_RECORD,
    ExportRecord,
    FeedbackRecord,
    FeedbackStore,
)
from image_finetune.steps.feedback import export_feedback, mark_retrained
from image_finetune.steps.monitor import MonitorSettings, count_labelled, retrain

# The smallest JPEG that decodes (1x1): the export writes the stored bytes as they are.
TINY_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300080606070605080707070909080a0c140d0c0b"
    "0b0c1912130f141d1a1f1e1d1a1c1c20242e2720222c231c1c2837292c30313434341f27393d38323c2e3334"
    "32ffc0000b080001000101011100ffc4001f0000010501010101010100000000000000000102030405060708"
    "090a0bffc400b5100002010303020403050504040000017d01020300041105122131410613516107227114"
    "328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a434445464748"
    "494a535455565758595a636465666768696a737475767778797a838485868788898a92939495969798999a"
    "a2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8"
    "e9eaf1f2f3f4f5f6f7f8f9faffda0008010100003f00fbd3ffd9"
)


def add_labels(store: FeedbackStore, prefix: str, count: int, label: str = "cat") -> None:
    for index in range(count):
        store.add(
            FeedbackRecord(
                f"{prefix}{index}",
                0,
                label,
                time.time(),
                "1",
                "champion",
                "dog",
                0.8,
                image=TINY_JPEG,
                image_format="jpeg",
            )
        )


@pytest.fixture
def store_uri(tmp_path) -> str:
    uri = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = FeedbackStore(uri)
    add_labels(store, "first-", 5)
    store.close()
    return uri


def test_labels_count_as_new_until_a_completed_retraining_used_them(store_uri, tmp_path):
    first = tmp_path / "export-1"
    assert export_feedback(store_uri, first)["new_since_retrain"] == 5
    assert count_labelled(first) == (5, 5)
    late = FeedbackStore(store_uri)  # labels arriving while the retraining runs
    add_labels(late, "during-", 2)
    late.close()
    assert mark_retrained(store_uri, first)["advanced"] is True
    second = tmp_path / "export-2"
    exported = export_feedback(store_uri, second)
    assert (exported["images"], exported["new_since_retrain"]) == (7, 2)
    assert count_labelled(second) == (2, 7)
    # The older export cannot move the watermark back.
    assert mark_retrained(store_uri, first)["advanced"] is False
    assert count_labelled(second) == (2, 7)
    mark_retrained(store_uri, second)
    assert export_feedback(store_uri, tmp_path / "export-3")["new_since_retrain"] == 0


def test_a_folder_made_by_hand_counts_every_image_and_a_bad_record_is_refused(tmp_path):
    folder = tmp_path / "hand" / "cat"
    folder.mkdir(parents=True)
    for index in range(3):
        (folder / f"{index}.jpg").write_bytes(TINY_JPEG)
    assert count_labelled(tmp_path / "hand") == (3, 3)
    (tmp_path / "hand" / EXPORT_RECORD).write_text('{"images": 3, "new_images": 9}')
    with pytest.raises(MissingInputError, match=EXPORT_RECORD):
        count_labelled(tmp_path / "hand")
    with pytest.raises(MissingInputError, match="not an export"):
        mark_retrained(f"sqlite:///{tmp_path / 'none.db'}", tmp_path / "elsewhere")


def test_the_watermark_history_is_bounded(tmp_path, monkeypatch):
    from image_finetune.monitoring import feedback_store

    monkeypatch.setattr(feedback_store, "MAX_WATERMARKS", 3)
    store = FeedbackStore(str(tmp_path / "feedback.db"))
    for to in range(1, 8):
        assert store.advance_watermark(float(to), "retrained")
    assert store.watermark() == 7.0
    assert [row[0] for row in store.watermark_history()] == [5.0, 6.0, 7.0]


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory) -> Path:
    """A real DVC project whose one stage reads ``data.extra_paths`` and succeeds: what
    ``monitor --retrain`` runs ``dvc exp run`` in."""
    if shutil.which("git") is None:
        pytest.skip("git is needed for a DVC project")
    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text("data:\n  extra_paths: []\n")
    (root / "dvc.yaml").write_text(
        "stages:\n  ingest:\n    cmd: python -c \"print('ingested')\"\n"
        "    params: [data.extra_paths]\n"
    )

    def run(*command: str) -> None:
        subprocess.run(command, cwd=root, check=True, capture_output=True)

    run("git", "init", "-q")
    run("git", "config", "user.email", "test@example.com")
    run("git", "config", "user.name", "test")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "project")
    return root


def test_a_completed_local_retrain_moves_the_watermark_a_failed_one_does_not(
    store_uri, tmp_path, dvc_project
):
    export = tmp_path / "export"
    export_feedback(store_uri, export)
    settings = MonitorSettings(labels=export, min_labels=5, retrain=True, feedback_uri=store_uri)
    not_a_project = tmp_path / "elsewhere"
    not_a_project.mkdir()
    failed = retrain(not_a_project, settings)
    assert failed["exit_code"] != 0 and "watermark" not in failed
    assert count_labelled(export) == (5, 5)
    assert export_feedback(store_uri, tmp_path / "again")["new_since_retrain"] == 5
    done = retrain(dvc_project, settings)
    assert done["exit_code"] == 0, done
    assert done["watermark"]["advanced"] is True
    assert export_feedback(store_uri, tmp_path / "after")["new_since_retrain"] == 0
    record = json.loads((tmp_path / "after" / EXPORT_RECORD).read_text())
    assert ExportRecord(**record).watermark == done["watermark"]["watermark"]
