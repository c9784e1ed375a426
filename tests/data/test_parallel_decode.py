"""A large folder decodes in worker processes: the dataset, and the problems it reports,
are those of decoding every file in this process."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from image_finetune.data import decoded
from image_finetune.data.image_folder import read_image_folder
from image_finetune.errors import IngestError


def read(folder: Path, scratch: Path, parallel: bool, monkeypatch):
    """The folder read with every file decoded in workers (in chunks of 7) or none."""
    monkeypatch.setattr(decoded, "PARALLEL_AFTER", 0 if parallel else 10**9)
    monkeypatch.setattr(decoded, "CHUNK_IMAGES", 7)
    monkeypatch.setattr(decoded, "decode_workers", lambda: 2)  # on a one-core machine too
    return read_image_folder(folder, 32, "resize", scratch)


def test_workers_give_the_dataset_decoding_here_gives(small_folder, tmp_path, monkeypatch):
    here = read(small_folder, tmp_path / "here", False, monkeypatch)
    workers = read(small_folder, tmp_path / "workers", True, monkeypatch)
    assert here.class_names == workers.class_names
    for split in ("train", "test"):
        assert here.sources[split] == workers.sources[split]
        assert np.array_equal(here.labels[split], workers.labels[split])
        assert np.array_equal(np.asarray(here.images[split]), np.asarray(workers.images[split]))


def test_workers_report_the_bad_files_decoding_here_reports(small_folder, tmp_path, monkeypatch):
    folder = tmp_path / "folder"
    shutil.copytree(small_folder, folder)
    cat = next(p for p in sorted((folder / "train").iterdir()) if p.is_dir())
    (cat / "truncated.jpg").write_bytes((next(cat.glob("*.jpg"))).read_bytes()[:40])
    (cat / "text.png").write_bytes(b"not a picture")
    reports = []
    for parallel in (False, True):
        with pytest.raises(IngestError) as raised:
            read(folder, tmp_path / f"scratch-{parallel}", parallel, monkeypatch)
        reports.append(sorted(raised.value.problems))
    assert reports[0] == reports[1] and len(reports[0]) == 2
    assert any("truncated.jpg" in problem for problem in reports[0])
