"""Inputs an attacker or an unlucky user would bring: crafted pickles, archive bombs, odd
names, clutter, links, a cancelled ingest. Each gets a clear error naming the file, or is
ignored where it is harmless, and nothing runs, floods memory or is left behind."""

import io
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from image_finetune.config import DataParams
from image_finetune.errors import IngestError
from tests.support import copy_tree, ingest_source

PARAMS = DataParams(validation_fraction=0.2)


class Zeros(io.RawIOBase):
    """A file of ``size`` zero bytes that never sits in memory whole."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def add_member(
    archive: tarfile.TarFile, name: str, data: bytes | None = None, size: int | None = None
) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if data is not None else size
    archive.addfile(info, io.BytesIO(data) if data is not None else Zeros(size))


class Exploit:
    """Unpickling this runs a command: what a crafted CIFAR archive would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cifar_python_archive(path: Path, batch: object) -> Path:
    meta = pickle.dumps({b"label_names": [b"a", b"b"]})
    with tarfile.open(path, "w:gz") as archive:
        for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
            add_member(archive, f"cifar-10-batches-py/{name}", pickle.dumps(batch))
        add_member(archive, "cifar-10-batches-py/batches.meta", meta)
    return path


def test_a_crafted_cifar_pickle_is_refused_without_running_anything(tmp_path):
    marker = tmp_path / "pwned"
    archive = cifar_python_archive(tmp_path / "evil.tar.gz", {b"data": Exploit(marker)})
    with pytest.raises(
        IngestError,
        match=r"data_batch_1 is not a CIFAR-10 batch "
        r"\(posix.system is not part of the CIFAR-10 format",
    ):
        ingest_source(
            PARAMS.model_copy(update={"source": "cifar-python"}), archive, tmp_path / "out"
        )
    assert not marker.exists(), "the pickle's payload ran"


def test_a_genuine_cifar_pickle_still_loads(tmp_path):
    batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 0, 1]}
    archive = cifar_python_archive(tmp_path / "ok.tar.gz", batch)
    manifest = ingest_source(
        PARAMS.model_copy(update={"source": "cifar-python"}), archive, tmp_path / "out"
    )
    assert manifest["splits"]["test"]["count"] == 4


def test_an_archive_bomb_member_is_refused_unread(small_folder, tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as archive:
        for split in ("train", "test"):
            archive.add(small_folder / split, arcname=split)
        add_member(archive, "train/cat/huge.png", size=400 * 1024 * 1024)
    assert bomb.stat().st_size < 5 * 1024 * 1024  # 400 MiB of zeros compress to little
    tracemalloc.start()
    with pytest.raises(IngestError) as caught:
        ingest_source(PARAMS, bomb, tmp_path / "out")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "train/cat/huge.png: 419430400 bytes, over the limit of 67108864 per file" in str(
        caught.value
    )
    assert peak < 100 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB: the member was read"


def test_a_folder_packed_with_dot_paths_and_clutter_ingests_like_the_folder(small_folder, tmp_path):
    folder = copy_tree(small_folder, tmp_path / "tree")
    (folder / ".DS_Store").write_bytes(b"\0Bud1")
    (folder / "train" / "cat" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder / "train" / "dog" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "._x.png").write_bytes(b"junk")
    packed = tmp_path / "packed.tar.gz"
    subprocess.run(["tar", "czf", str(packed), "-C", str(folder), "."], check=True)
    from_folder = ingest_source(PARAMS, folder, tmp_path / "a")
    from_archive = ingest_source(PARAMS, packed, tmp_path / "b")
    assert from_folder["splits"] == from_archive["splits"]


def test_a_class_name_that_is_not_utf8_is_refused_with_its_bytes_escaped(small_folder, tmp_path):
    folder = copy_tree(small_folder, tmp_path / "tree")
    os.rename(bytes(folder / "train" / "cat"), bytes(folder / "train") + b"/caf\xe9")
    with pytest.raises(IngestError, match=r"train/caf\\xe9: name is not valid UTF-8"):
        ingest_source(PARAMS, folder, tmp_path / "out")


def test_links_are_refused_not_followed(small_folder, tmp_path):
    folder = copy_tree(small_folder, tmp_path / "tree")
    (folder / "train" / "cat" / "passwd.png").symlink_to("/etc/passwd")
    with pytest.raises(IngestError, match=r"train/cat/passwd.png: a link or special file"):
        ingest_source(PARAMS, folder, tmp_path / "out")


def test_a_path_that_climbs_out_of_the_archive_is_refused(small_folder, tmp_path):
    archive_path = tmp_path / "climb.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        archive.add(small_folder / "train", arcname="train")
        add_member(archive, "train/../../etc/cron.d/x.png", b"\x89PNG")
    with pytest.raises(IngestError, match=r"a path outside the dataset"):
        ingest_source(PARAMS, archive_path, tmp_path / "out")


STAGING_SCRIPT = """
import sys, time
from pathlib import Path
import typer
from image_finetune.console import reported
from image_finetune.atomic import atomic_directory

@reported
def stage(target: str) -> None:
    with atomic_directory(Path(target)) as staging:
        (staging / "half-written.npy").write_bytes(b"x" * 1000)
        print("staged", flush=True)
        time.sleep(60)

typer.run(stage)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_writing_leaves_no_staging_behind(tmp_path, signum):
    """What DVC, Kubeflow or Kubernetes (SIGTERM) and Ctrl-C (SIGINT) do to a command."""
    # SIG_DFL first: a runner started in the background passes SIGINT on ignored, and
    # Python keeps an ignored SIGINT ignored.
    writer = subprocess.Popen(
        [sys.executable, "-c", STAGING_SCRIPT, str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert writer.stdout.readline().strip() == "staged"
    assert list(tmp_path.glob(".data.tmp-*"))
    writer.send_signal(signum)
    assert writer.wait(timeout=30) == 128 + signum
    assert "Traceback" not in writer.stderr.read()
    assert list(tmp_path.iterdir()) == []


def test_outputs_follow_the_umask(small_folder, tmp_path):
    previous = os.umask(0o027)
    try:
        ingest_source(PARAMS, small_folder, tmp_path / "out")
    finally:
        os.umask(previous)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750


def test_no_source_is_a_clear_error(tmp_path):
    explicit = PARAMS.model_copy(update={"source": "folder"})  # auto would download instead
    with pytest.raises(IngestError, match="data source not found"):
        ingest_source(explicit, tmp_path / "nothing.tar.gz", tmp_path / "out")
