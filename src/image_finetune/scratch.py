"""Scratch folders that a killed run cannot leave behind for good.

Each folder ``<prefix>XXXXXXXX`` has a lock file beside it, ``<prefix>XXXXXXXX.lock``,
which its process holds locked (``flock``) for as long as it uses the folder. The kernel
drops the lock when the process ends, however it ends (SIGKILL, OOM killer, power cut
aside), so the next run that claims a folder with the same prefix can tell a dead run's
scratch (its lock can be taken) from a live run's (it cannot), whatever their process ids
and whichever container they ran in, and sweeps only the dead. Folders without a lock file
(left by versions before this one) are never touched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

LOCK_SUFFIX = ".lock"
NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


@contextlib.contextmanager
def claimed_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """A new empty folder ``parent/<prefix>XXXXXXXX``, owned by this process for the block
    and removed after it (unless it was renamed away); dead runs' folders with the same
    prefix are swept first."""
    parent.mkdir(parents=True, exist_ok=True)
    sweep_dead_folders(parent, prefix)
    descriptor, lock = _locked_file(parent, prefix)
    folder = lock.with_name(lock.name.removesuffix(LOCK_SUFFIX))
    try:
        folder.mkdir()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lock.unlink(missing_ok=True)
        os.close(descriptor)


def sweep_dead_folders(parent: Path, prefix: str) -> list[Path]:
    """Remove the folders ``parent/<prefix>*`` whose owner is gone, with their lock files;
    return them. A folder whose owner is alive is left alone."""
    swept = []
    for lock in sorted(parent.glob(f"{glob.escape(prefix)}*{LOCK_SUFFIX}")):
        try:
            descriptor = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile, or not ours to open
        try:
            if _lock_now(descriptor, lock) is not True:
                continue  # alive, or nothing can tell
            folder = lock.with_name(lock.name.removesuffix(LOCK_SUFFIX))
            shutil.rmtree(folder, ignore_errors=True)
            lock.unlink(missing_ok=True)
            swept.append(folder)
        finally:
            os.close(descriptor)
    return swept


def _locked_file(parent: Path, prefix: str) -> tuple[int, Path]:
    """A new lock file, locked: retried in the rare case a sweeper took it between its
    creation and its locking (and removed it). Where the filesystem has no locks, the file
    is kept unlocked: the folder works, but no later run will sweep it."""
    while True:
        descriptor, name = tempfile.mkstemp(prefix=prefix, suffix=LOCK_SUFFIX, dir=parent)
        if _lock_now(descriptor, Path(name)) is not False:
            return descriptor, Path(name)
        os.close(descriptor)


def _lock_now(descriptor: int, path: Path) -> bool | None:
    """Lock ``descriptor`` without waiting; True only if it is locked and ``path`` still
    names the file locked (a lock on a file swept away meanwhile owns nothing); None where
    the filesystem cannot lock (some network and FUSE mounts)."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in NO_LOCKS:
            return None
        raise
    try:
        named, locked = os.stat(path, follow_symlinks=False), os.fstat(descriptor)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (locked.st_dev, locked.st_ino)
