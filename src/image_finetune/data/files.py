"""Walking a directory tree or a .tar(.gz) archive defensively: names are checked and sizes
budgeted before a byte is read, OS clutter is skipped, and an archive's oddities (``./``
prefixes, ``..``, names that are not UTF-8, links) never reach the caller as paths."""

from __future__ import annotations

import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from image_finetune.errors import IngestError

MAX_FILE_BYTES = 64 * 1024 * 1024  # an image file larger than this is refused unread
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)
CLUTTER = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
NOT_FOLLOWED = "a link or special file, not followed"


@dataclass(frozen=True)
class Entry:
    """One file or folder: its clean relative path, its size (None: a folder), and how to
    read it (only while the walk is at it, for archives)."""

    path: PurePosixPath
    size: int | None
    read: Callable[[], bytes]

    @property
    def is_folder(self) -> bool:
        return self.size is None


def _no_bytes() -> bytes:
    return b""


def printable(name: str) -> str:
    """A name as a person can read it: bytes that are not UTF-8 shown escaped."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return repr(name.encode("utf-8", "surrogateescape"))[2:-1]


def name_problem(name: str) -> str | None:
    """Why a member's name cannot be taken as a path (None: it can)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"{printable(name)}: name is not valid UTF-8"
    if ".." in PurePosixPath(name).parts or name.startswith("/"):
        return f"{name}: a path outside the dataset"
    return None


def is_clutter(path: PurePosixPath) -> bool:
    """Hidden files and folders (``.*``) and what file managers leave behind."""
    return any(part.startswith(".") or part.lower() in CLUTTER for part in path.parts)


def clean_path(name: str) -> PurePosixPath:
    """``./a//b/`` -> ``a/b``: empty and ``.`` parts dropped, nothing else touched."""
    return PurePosixPath(*[p for p in PurePosixPath(name).parts if p not in ("", ".", "/")])


def walk(path: Path, problems: list[str], max_bytes: int = MAX_FILE_BYTES) -> Iterator[Entry]:
    """Every file and folder under a directory or in an archive, clutter skipped; what is
    refused (bad names, oversized files, links, FIFOs and devices, a member stored twice)
    is added to ``problems`` by name."""
    _refuse_special_source(path)
    entries = _walk_directory(path) if path.is_dir() else _walk_archive(path)
    stored: set[PurePosixPath] = set()
    for name, size, read in entries:
        problem = name_problem(name)
        if problem is None and isinstance(read, str):
            problem = f"{name}: {read}"
        if problem is not None:
            problems.append(problem)
            continue
        rel = clean_path(name)
        if not rel.parts or is_clutter(rel):
            continue
        if size is not None:
            problem = _stored_twice(rel, stored)
        if problem is None and size is not None and size > max_bytes:
            problem = f"{rel}: {size} bytes, over the limit of {max_bytes} per file"
        if problem is not None:
            problems.append(problem)
            continue
        yield Entry(rel, size, read)


def _refuse_special_source(path: Path) -> None:
    """The source itself must be a folder or a regular file: a FIFO would block its reader."""
    mode = path.stat().st_mode if path.exists() else None
    if mode is not None and not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise IngestError(
            f"{path}: not a folder or an archive file ({special_kind(mode)}), never opened"
        )


def _stored_twice(rel: PurePosixPath, stored: set[PurePosixPath]) -> str | None:
    """A file met again under the same clean path (an archive can hold two; which one is
    meant cannot be told)."""
    if rel in stored:
        return f"{rel}: stored twice in the archive"
    stored.add(rel)
    return None


SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def special_kind(mode: int) -> str:
    """What a file that is neither a regular file, a folder nor a link is."""
    return next((kind for test, kind in SPECIAL_KINDS if test(mode)), "a special file")


def _walk_directory(root: Path):
    for entry in sorted(root.rglob("*")):
        name = entry.relative_to(root).as_posix()
        mode = entry.lstat().st_mode  # never opened: a FIFO would block its reader
        if stat.S_ISLNK(mode):
            yield name, 0, NOT_FOLLOWED  # refused in walk(): a link may lead outside the tree
        elif stat.S_ISDIR(mode):
            yield name, None, _no_bytes
        elif stat.S_ISREG(mode):
            yield name, entry.stat().st_size, entry.read_bytes
        else:
            yield name, 0, f"not a regular file ({special_kind(mode)}), never opened"


def _walk_archive(path: Path):
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if member.isdir():
                    yield member.name, None, _no_bytes
                elif member.isfile():
                    yield member.name, member.size, _member_reader(archive, member, path)
                else:
                    yield member.name, 0, NOT_FOLLOWED
    except ARCHIVE_ERRORS as exc:
        raise IngestError(f"{path}: truncated or unreadable archive ({exc})") from None


def _member_reader(
    archive: tarfile.TarFile, member: tarfile.TarInfo, path: Path
) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            handle = archive.extractfile(member)
            return handle.read() if handle is not None else b""
        except ARCHIVE_ERRORS as exc:
            raise IngestError(f"{path}: truncated or unreadable archive ({exc})") from None

    return read


def archive_members(path: Path, wanted: set[str], max_bytes: int) -> dict[str, bytes]:
    """The members of an archive named (by base name) in ``wanted``, each read only if it
    fits ``max_bytes``; others are never read."""
    if not path.exists():
        raise IngestError(f"{path}: data source not found (set data.path or $IMAGE_FINETUNE_DATA)")
    problems: list[str] = []
    members = {}
    for entry in walk(path, problems, max_bytes):
        if not entry.is_folder and entry.path.name in wanted:
            members[entry.path.name] = entry.read()
    oversized = [p for p in problems if "over the limit" in p]
    if oversized:
        raise IngestError(f"{path}: members too large for a CIFAR-10 archive", oversized)
    return members
