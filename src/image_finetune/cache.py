"""The training cache: cached backbone activations, checkpoints and finished attempts, each
entry a folder named by the key of everything that determines it.

- Where it lives: one cache per project, shared by the workspace, ``dvc exp run --temp`` and
  queued experiments (DVC runs those in copies under ``.dvc/tmp/exps``, and sets ``DVC_ROOT``
  to the project's own root in each); ``IMAGE_FINETUNE_CACHE`` moves it.
- Sharing it safely: every user of an entry holds a shared lock on it (so a prune never
  removes it underneath), a writer also holds the entry's write lock (so two runs never write
  the same entry at once: the second waits, then reuses what the first wrote), and an entry
  is trusted only where its ``key.json`` names the key it is looked up by.
- Its size: entries listed with their size and when they were last used, pruned by age and
  by total size, least recently used first.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from image_finetune.atomic import write_text_atomic
from image_finetune.errors import ConfigError
from image_finetune.locate import DVC_ROOT_ENV  # the project's root, in its copies too

DEFAULT_CACHE = Path(".cache/image_finetune")  # against the project's root
CACHE_ENV = "IMAGE_FINETUNE_CACHE"
FEATURES, CHECKPOINTS, ATTEMPTS = "features", "checkpoints", "attempts"
KINDS = (FEATURES, CHECKPOINTS, ATTEMPTS)
KEY_FILE = "key.json"
LOCKS = "locks"
ENTRY_NAME = re.compile(r"^\.?(?P<key>[0-9a-f]{16})(?:$|[.-])")  # an entry, its staging too


def cache_location(option: Path, root: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """Where the training cache is: ``IMAGE_FINETUNE_CACHE`` in place of the default; a
    relative path against the project's root (DVC's, when a stage runs in a copy of the
    project), so that every workspace of a project shares one cache."""
    if option == DEFAULT_CACHE and environ.get(CACHE_ENV):
        option = Path(environ[CACHE_ENV])
    option = option.expanduser()
    if option.is_absolute():
        return option
    return (Path(environ.get(DVC_ROOT_ENV) or root) / option).resolve()


# -- locks -----------------------------------------------------------------------------------


@contextmanager
def _locked(path: Path, mode: int) -> Iterator[int]:
    """``path`` locked with flock ``mode``; the lock is retaken when the file was removed
    (by a prune) while this waited for it, so that holders always share one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)  # flock needs no write access
        try:
            fcntl.flock(handle, mode)
            if os.path.exists(path) and os.stat(path).st_ino == os.fstat(handle).st_ino:
                break
        except BaseException:
            os.close(handle)
            raise
        os.close(handle)
    try:
        yield handle
    finally:
        os.close(handle)  # closing releases the lock


def _lock_path(cache: Path, key: str, purpose: str = "use") -> Path:
    return cache / LOCKS / f"{key}.{purpose}.lock"


@contextmanager
def entry_in_use(cache: Path, key: str) -> Iterator[None]:
    """Hold the entries named ``key`` (features, or an attempt and its checkpoints) as in use:
    a prune leaves them alone until this ends. Marks them used now."""
    path = _lock_path(cache, key)
    with _locked(path, fcntl.LOCK_SH):
        with suppress(PermissionError):  # another user's lock file in a shared cache
            os.utime(path)
        yield


@contextmanager
def entry_writing(cache: Path, key: str) -> Iterator[None]:
    """The one writer of the entries named ``key``: another run that would write them waits
    here, and then finds them written."""
    with _locked(_lock_path(cache, key, "write"), fcntl.LOCK_EX):
        yield


@contextmanager
def entry_for_removal(cache: Path, key: str) -> Iterator[bool]:
    """True (and the entry held against every user) when nobody uses the entry; else False."""
    path = _lock_path(cache, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        # Another prune may have removed the file in between: then this lock guards nothing.
        yield path.exists() and path.stat().st_ino == os.fstat(handle).st_ino
    finally:
        os.close(handle)


# -- keys ------------------------------------------------------------------------------------


def write_key(folder: Path, key: str, what: str) -> None:
    """Record in ``folder`` the key it is an entry for (and what it holds, for ``cache ls``)."""
    write_text_atomic(folder / KEY_FILE, json.dumps({"key": key, "what": what}) + "\n")


def read_key(folder: Path) -> dict:
    """The entry's key record ({} where there is none or it is unreadable)."""
    try:
        record = json.loads((folder / KEY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def holds_key(folder: Path, key: str) -> bool:
    """Whether ``folder`` is an entry for ``key``: nothing else is ever trusted."""
    return read_key(folder).get("key") == key


def claim_entry(folder: Path, key: str, what: str) -> Path:
    """``folder`` made an entry for ``key`` (call it holding the key's write lock): a folder
    that does not name the key (a half-made one, or an older layout) is emptied first."""
    if folder.exists() and not holds_key(folder, key):
        shutil.rmtree(folder)
    if not folder.exists():
        folder.mkdir(parents=True)
        write_key(folder, key, what)
    return folder


# -- listing and pruning ---------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One cache entry: every path of one kind named by one key."""

    kind: str
    key: str
    paths: tuple[Path, ...]
    size: int  # bytes
    created: float  # seconds since the epoch
    last_used: float
    what: str = ""


def _size(path: Path) -> int:
    """Bytes under ``path`` (files that a run removes meanwhile count nothing)."""
    files = (
        [path]
        if not path.is_dir() or path.is_symlink()
        else [Path(top) / name for top, _, names in os.walk(path) for name in names]
    )
    total = 0
    for file in files:
        with suppress(FileNotFoundError):
            total += file.lstat().st_size
    return total


def _mtime(path: Path) -> float:
    """When ``path`` was last modified (0 when it is gone)."""
    try:
        return path.lstat().st_mtime
    except FileNotFoundError:
        return 0.0


def list_entries(cache: Path) -> list[Entry]:
    """Every entry of the cache, least recently used first."""
    entries = []
    for kind in KINDS:
        groups: dict[str, list[Path]] = {}
        for path in sorted((cache / kind).glob("*")) if (cache / kind).is_dir() else ():
            if match := ENTRY_NAME.match(path.name):
                groups.setdefault(match["key"], []).append(path)
        for key, paths in groups.items():
            created = min(map(_mtime, paths))
            lock = _lock_path(cache, key)
            used = max(created, _mtime(lock))
            entries.append(
                Entry(
                    kind,
                    key,
                    tuple(paths),
                    sum(map(_size, paths)),
                    created,
                    used,
                    read_key(cache / kind / key).get("what", ""),
                )
            )
    return sorted(entries, key=lambda e: (e.last_used, e.kind, e.key))


def is_in_use(cache: Path, entry: Entry) -> bool:
    """Whether a run holds the entry now."""
    with entry_for_removal(cache, entry.key) as free:
        return not free


def should_prune(
    entry: Entry, now: float, total: int, older_than: float | None, max_size: int | None
) -> bool:
    """Whether ``entry`` goes: unused for longer than ``older_than`` seconds, or the cache
    (``total`` bytes now) is over ``max_size`` (entries offered least recently used first)."""
    expired = older_than is not None and now - entry.last_used > older_than
    return expired or (max_size is not None and total > max_size)


def remove_entry(cache: Path, entry: Entry) -> bool:
    """Remove ``entry`` unless a run uses it; whether it was removed."""
    with entry_for_removal(cache, entry.key) as free:
        if not free:
            return False
        for path in entry.paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if not any((cache / kind / entry.key).exists() for kind in KINDS):
            _lock_path(cache, entry.key, "write").unlink(missing_ok=True)
            _lock_path(cache, entry.key).unlink(missing_ok=True)
        return True


# -- durations and sizes ---------------------------------------------------------------------

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?\s*$", re.IGNORECASE)
POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
MAX_TEXT = 32


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (one number, one unit)."""
    match = DURATION.match(text) if len(text) <= MAX_TEXT else None
    if not match or not math.isfinite(seconds := float(match[1]) * SECONDS[match[2].lower()]):
        raise ConfigError(
            f"--older-than {text[:MAX_TEXT]!r}: not a duration; write a number "
            "and a unit, s, m, h, d or w (e.g. 30d, 12h)"
        )
    return seconds


def parse_size(text: str) -> int:
    """Bytes in ``500M``, ``10G``, ``1.5GiB``, ``2T``, ``4096`` (K, M, G, T: powers of 1024)."""
    match = SIZE.match(text) if len(text) <= MAX_TEXT else None
    if not match or not math.isfinite(
        value := float(match[1]) * 1024 ** POWERS[(match[2] or "").lower()]
    ):
        raise ConfigError(
            f"--max-size {text[:MAX_TEXT]!r}: not a size; write a number and "
            "an optional unit, K, M, G or T (powers of 1024; e.g. 10G, 500M)"
        )
    return int(value)


def human_size(size: float) -> str:
    """``size`` bytes as ``du -h`` writes them (powers of 1024)."""
    for unit in ("B", "K", "M", "G"):
        if size < 1024:
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}T"


def human_age(seconds: float) -> str:
    """``seconds`` as the largest whole unit: 45s, 12m, 3h, 2d."""
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{int(seconds // length)}{unit}"
    return f"{max(0, int(seconds))}s"


def now() -> float:
    """The clock ages are measured on (file times are wall-clock)."""
    return time.time()
