"""Scratch folders: owned while their process lives, swept by the next claim once it is gone,
never while it lives. (A real SIGKILL: tests/data/test_odd_files_and_leftovers.py.)"""

import errno
import fcntl

import pytest

from image_finetune.scratch import claimed_folder, sweep_dead_folders

PREFIX = ".data.decoded-"


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_claimed_folder_has_a_lock_beside_it_and_leaves_nothing(tmp_path):
    with claimed_folder(tmp_path, PREFIX) as folder:
        (folder / "rows.npy").write_bytes(b"x")
        assert names(tmp_path) == [folder.name, f"{folder.name}.lock"]
    assert names(tmp_path) == []


def test_a_failure_inside_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), claimed_folder(tmp_path, PREFIX) as folder:
        (folder / "rows.npy").write_bytes(b"x")
        raise RuntimeError("half way")
    assert names(tmp_path) == []


def test_a_live_claim_is_never_swept(tmp_path):
    with claimed_folder(tmp_path, PREFIX) as live:
        assert sweep_dead_folders(tmp_path, PREFIX) == []
        with claimed_folder(tmp_path, PREFIX) as other:
            assert other != live and live.exists()
        assert live.exists()


def test_an_unlocked_lock_is_a_dead_owner_swept_with_its_folder(tmp_path):
    dead = tmp_path / f"{PREFIX}abc123"  # what a killed run leaves: nobody holds the lock
    (dead / "train").mkdir(parents=True)
    (dead / "train" / "rows-00000.npy").write_bytes(b"x" * 100)
    (tmp_path / f"{PREFIX}abc123.lock").touch()
    legacy = tmp_path / f"{PREFIX}old0000"  # no lock file: an older version's, left alone
    legacy.mkdir()
    other = tmp_path / ".other.decoded-abc.lock"  # another output's prefix
    other.touch()
    with claimed_folder(tmp_path, PREFIX):
        assert not dead.exists() and legacy.exists() and other.exists()
    assert names(tmp_path) == sorted([legacy.name, other.name])


def test_where_the_filesystem_cannot_lock_nothing_is_swept_and_claims_still_work(
    tmp_path, monkeypatch
):
    (tmp_path / f"{PREFIX}abc123").mkdir()
    (tmp_path / f"{PREFIX}abc123.lock").touch()

    def no_locks(*_):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with claimed_folder(tmp_path, PREFIX) as folder:
        assert folder.exists()
        assert (tmp_path / f"{PREFIX}abc123").exists()  # cannot tell: left alone
    assert names(tmp_path) == [f"{PREFIX}abc123", f"{PREFIX}abc123.lock"]
