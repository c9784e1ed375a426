"""Writes that readers see whole or not at all: a folder or a file is written under a unique
name beside its target and renamed into place only when the write succeeded. A writer killed
mid-way leaves no partial target; what it left beside it is swept by the next writer (see
:mod:`image_finetune.scratch`)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from image_finetune.scratch import claimed_folder, sweep_dead_folders

STAGING, PREVIOUS = ".tmp-", ".old-"  # beside the target: the new copy, the one it replaces


def sweep_dead_writes(target: Path) -> None:
    """Remove what writers of ``target`` killed mid-way left (see :func:`atomic_directory`):
    a step calls it first, so a dead run's copy does not eat the disk its work needs."""
    for kind in (STAGING, PREVIOUS):
        sweep_dead_folders(target.parent, f".{target.name}{kind}")


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block succeeds.

    The staging folder is removed on any failure (SIGTERM included, where the entry point
    turns it into SystemExit); one a killed run left is swept by the next. The result gets
    the permissions the umask gives a folder.
    """
    name = target.name
    with claimed_folder(target.parent, f".{name}{STAGING}") as staging:
        staging.chmod(0o777 & ~current_umask())
        yield staging
        with claimed_folder(target.parent, f".{name}{PREVIOUS}") as previous:
            if target.exists():
                target.rename(previous)  # onto the empty claimed folder: POSIX replaces it
            staging.rename(target)


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a unique path beside ``target`` (same suffix) to write; it replaces ``target``
    when the block succeeds and is removed when it fails. Unique per writer, so two
    processes writing the same target never write the same file; the last one wins whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(
        f".{target.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}{target.suffix}"
    )
    try:
        yield partial
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomic(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` whole (see :func:`atomic_file`)."""
    with atomic_file(target) as partial:
        partial.write_text(text)


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
