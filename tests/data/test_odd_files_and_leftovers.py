"""Files that are not files (a FIFO), members stored twice in an archive, and the scratch a
killed run leaves: each named and refused, or swept by the next run, and never another live
run's scratch."""

import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from image_finetune.config import DataParams
from image_finetune.errors import IngestError
from tests.support import copy_tree, ingest_source, wait_until

PARAMS = DataParams(validation_fraction=0.2)


class Deadline:
    """Fail (instead of hanging the suite) if the block takes over ``seconds``."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def __enter__(self):
        def expire(*_):
            raise TimeoutError(f"still running after {self.seconds} s: something blocked")

        self.previous = signal.signal(signal.SIGALRM, expire)
        signal.alarm(self.seconds)

    def __exit__(self, *_):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.previous)


def test_a_fifo_in_the_folder_is_named_and_never_opened(small_folder, tmp_path):
    folder = copy_tree(small_folder, tmp_path / "tree")
    os.mkfifo(folder / "train" / "cat" / "pipe.png")
    with Deadline(120), pytest.raises(IngestError) as caught:
        ingest_source(PARAMS, folder, tmp_path / "out")
    assert "train/cat/pipe.png: not a regular file (a FIFO)" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_fifo_as_the_source_is_refused_unopened(tmp_path):
    fifo = tmp_path / "data.tar.gz"
    os.mkfifo(fifo)
    explicit = PARAMS.model_copy(update={"source": "folder"})
    refused = r"not a folder or an archive file \(a FIFO\)"
    with Deadline(20), pytest.raises(IngestError, match=refused):
        ingest_source(explicit, fifo, tmp_path / "out")


def test_a_member_stored_twice_is_refused_by_name(small_folder, tmp_path):
    archive_path = tmp_path / "twice.tar.gz"
    first = next(iter(sorted((small_folder / "train" / "cat").iterdir())))
    with tarfile.open(archive_path, "w:gz") as archive:
        archive.add(small_folder / "train", arcname="train")
        archive.add(small_folder / "test", arcname="test")
        archive.add(first, arcname=f"./train/cat/{first.name}")  # the same path, spelt ./
    with pytest.raises(IngestError) as caught:
        ingest_source(PARAMS, archive_path, tmp_path / "out")
    assert IngestError.exit_code == 3
    assert f"train/cat/{first.name}: stored twice in the archive" in str(caught.value)


def scratch_of(out: Path) -> list[str]:
    """What an ingest into ``out`` may leave beside it: decoded images, staging, locks."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_the_scratch_of_a_killed_ingest_is_swept_by_the_next(cifar_tarball, small_folder, tmp_path):
    out = tmp_path / "work" / "data"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"source": "folder", "path": str(cifar_tarball)}}))
    ingest = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "image_finetune.cli",
            "ingest",
            "-p",
            str(params),
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: any(out.parent.glob(f".{out.name}.decoded-*/train/rows-*.npy")),
            timeout=300,
            what="the ingest never wrote decoded images",
        )
    finally:
        ingest.kill()  # SIGKILL: no handler runs
        ingest.wait()
    assert ingest.returncode == -signal.SIGKILL
    assert scratch_of(out), "the killed ingest left nothing to sweep"
    ingest_source(PARAMS, small_folder, out)
    assert scratch_of(out) == []
    assert (out / "manifest.json").exists()


HOLDER = """
import sys, time
from pathlib import Path
from image_finetune.errors import exit_on_termination
from image_finetune.atomic import atomic_directory

exit_on_termination()
with atomic_directory(Path(sys.argv[1])) as staging:
    (staging / "half-written.npy").write_bytes(b"x" * 1000)
    print("staged", flush=True)
    time.sleep(120)
"""


def hold_staging(target: Path) -> subprocess.Popen:
    """A process that stays in the middle of writing ``target``."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "staged"
    return holder


def test_a_killed_writers_staging_is_swept_a_live_ones_kept(small_folder, tmp_path):
    out = tmp_path / "data"
    killed = hold_staging(out)
    killed.kill()
    killed.wait()
    left_by_killed = set(scratch_of(out))
    assert left_by_killed
    live = hold_staging(out)
    try:
        left_by_live = sorted(set(scratch_of(out)) - left_by_killed)
        ingest_source(PARAMS, small_folder, out)
        assert (out / "manifest.json").exists()
        assert scratch_of(out) == left_by_live  # the dead one's swept, the live one's kept
        live_staging = [n for n in left_by_live if not n.endswith(".lock")]
        assert len(live_staging) == 1
        assert (tmp_path / live_staging[0] / "half-written.npy").exists()
    finally:
        live.terminate()
        live.wait()
    assert scratch_of(out) == []


def test_a_killed_writers_staging_is_swept_before_the_work(tmp_path):
    """The disk a dead run's copy takes is freed first: even an ingest that then fails."""
    out = tmp_path / "data"
    killed = hold_staging(out)
    killed.kill()
    killed.wait()
    assert scratch_of(out)
    no_train = tmp_path / "source" / "test" / "cat"
    no_train.mkdir(parents=True)
    with pytest.raises(IngestError, match="no train/ split"):
        ingest_source(PARAMS.model_copy(update={"source": "folder"}), no_train.parents[1], out)
    assert scratch_of(out) == []
