"""Reading a labels file: a CSV (with a header) or JSON Lines file listing images by path and
label, as labelling tools and Kaggle sets export them (``data.source: labels``).

The columns are ``path`` and ``label``, and optionally ``split`` (train, validation or test,
on every line); other columns are ignored. Paths are relative to the labels file's folder,
the images in any folder structure under it. Without a split column ingest splits the images
by their content (:mod:`~image_finetune.data.stable_split`).

Refused, each by line and name: a missing image, a row with no path or no label, a path that
climbs out of the folder (``..``, absolute, or a link leading out), the same image listed
twice with two labels or splits, a split that is not one of the three. The files are opened
without following a last link and only when they are regular files (a FIFO would block).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import stat
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

from image_finetune.data.decoded import DecodedImages
from image_finetune.data.files import MAX_FILE_BYTES
from image_finetune.data.layouts import KNOWN_SPLITS, UNSPLIT, is_image_name
from image_finetune.data.sources import RawDataset
from image_finetune.errors import IngestError
from image_finetune.hashing import sha256_file
from image_finetune.locate import LABELS_FILE_SUFFIXES

MAX_LABELS_FILE_BYTES = 256 * 1024 * 1024
MAX_LABEL_CHARS = 200
REQUIRED = ("path", "label")
WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Row:
    """One image the labels file lists: where (its line), which file, its label and split
    (None: the file has no split column)."""

    line: int
    path: PurePosixPath
    label: str
    split: str | None


def read_labels_file(
    path: Path, image_size: int, how: str, scratch: Path, max_per_class: int | None = None
) -> RawDataset:
    """The images a labels file lists, decoded into ``scratch`` (see
    :func:`~image_finetune.data.image_folder.read_image_folder` for sizes and ``how``)."""
    rows = listed_rows(path)
    folder = path.parent.resolve()
    problems: list[str] = []
    has_split = rows[0].split is not None
    with DecodedImages(scratch, image_size, how, max_per_class) as images:
        for row in rows:
            images.add(
                (row.split or UNSPLIT, row.label),
                str(row.path),
                partial(read_listed, folder, row),
                problems,
                hashed=not has_split,
            )
        images.finish()
    if problems:
        raise IngestError(f"{path}: bad images in the labels file", problems)
    class_dirs: dict[str, set[str]] = {}
    for row in rows:
        class_dirs.setdefault(row.split or UNSPLIT, set()).add(row.label)
    reference = "train" if has_split else UNSPLIT
    if reference not in class_dirs:
        raise IngestError(f"{path}: no line with split train (the classes are train's labels)")
    return images.dataset(path, class_dirs, reference, kind="label")


def listed_rows(path: Path) -> list[Row]:
    """The rows of a labels file, each checked; every refusal raised at once, by line."""
    require_labels_file(path)
    suffix = path.suffix.lower()
    if suffix not in LABELS_FILE_SUFFIXES:
        raise IngestError(f"{path}: a labels file is .csv or .jsonl, not {path.suffix or '(none)'}")
    size = path.stat().st_size
    if size > MAX_LABELS_FILE_BYTES:
        raise IngestError(f"{path}: {size} bytes, over the limit of {MAX_LABELS_FILE_BYTES}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    problems: list[str] = []
    rows = parse_csv(text, problems) if suffix == ".csv" else parse_jsonl(text, problems)
    problems += row_problems(rows) + listing_problems(rows, path.parent)
    if problems:
        raise IngestError(f"{path}: the labels file is refused", problems)
    if not rows:
        raise IngestError(f"{path}: the labels file lists no image")
    return unique(rows)


def require_labels_file(path: Path) -> None:
    """Refuse a labels file that is not there or not a file."""
    if not path.is_file():
        raise IngestError(
            f"{path}: labels file not found (data.source: labels wants data.path "
            "or $IMAGE_FINETUNE_DATA to name a .csv or .jsonl file)"
        )


def parse_csv(text: str, problems: list[str]) -> list[Row]:
    """Rows of a CSV labels file (header ``path,label[,split]``, other columns ignored)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip().lower() for name in next(reader, [])]
        missing = [name for name in REQUIRED if name not in header]
        if missing:
            problems.append(
                f"line 1: the header has no {' or '.join(missing)} column "
                f"(found: {', '.join(header) or 'nothing'})"
            )
            return []
        columns = {name: header.index(name) for name in (*REQUIRED, "split") if name in header}
        rows = []
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            cells = {name: record[i] if i < len(record) else "" for name, i in columns.items()}
            rows.append(make_row(reader.line_num, cells, "split" in columns, problems))
    except csv.Error as exc:
        problems.append(f"line {reader.line_num}: not CSV ({exc})")
        return []
    return [row for row in rows if row is not None]


def parse_jsonl(text: str, problems: list[str]) -> list[Row]:
    """Rows of a JSON Lines labels file: one object per line with path, label[, split]."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:  # nesting deep enough to exhaust the stack
            problems.append(f"line {number}: not JSON ({type(exc).__name__})")
            continue
        if not isinstance(record, dict):
            problems.append(f"line {number}: not a JSON object")
            continue
        records.append((number, record))
    has_split = any("split" in record for _, record in records)
    rows = [make_row(number, record, has_split, problems) for number, record in records]
    return [row for row in rows if row is not None]


def make_row(line: int, cells: dict, has_split: bool, problems: list[str]) -> Row | None:
    """A row from its cells (strings, or a JSON number for a label), or None and a problem."""
    values = {}
    for name in (*REQUIRED, "split") if has_split else REQUIRED:
        value = cells.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and name == "label":
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            what = {
                "path": f"label {cells.get('label')!r} with no image path",
                "label": f"{cells.get('path')!r}: no label",
                "split": f"{cells.get('path')!r}: no split (the file has a split column: "
                f"give one of {', '.join(KNOWN_SPLITS)} on every line)",
            }[name]
            problems.append(f"line {line}: {what}")
            return None
        values[name] = value.strip()
    if not values["path"].isprintable():
        problems.append(f"line {line}: {values['path']!r}: the path has control characters")
        return None
    return Row(
        line, PurePosixPath(values["path"].replace("\\", "/")), values["label"], values.get("split")
    )


def row_problems(rows: list[Row]) -> list[str]:
    """What is wrong with each row on its own: its path, label or split."""
    problems = []
    for row in rows:
        where = f"line {row.line}: {row.path}"
        if row.path.is_absolute() or WINDOWS_DRIVE.match(str(row.path)):
            problems.append(f"{where}: an absolute path (paths are relative to the labels file)")
        elif ".." in row.path.parts:
            problems.append(f"{where}: climbs out of the labels file's folder (..)")
        elif not is_image_name(row.path):
            problems.append(f"{where}: not an image file (expected .png, .jpg or .jpeg)")
        if len(row.label) > MAX_LABEL_CHARS or not row.label.isprintable():
            problems.append(
                f"line {row.line}: label {row.label[:MAX_LABEL_CHARS]!r} has control "
                f"characters or is over {MAX_LABEL_CHARS} characters"
            )
        if row.split is not None and row.split not in KNOWN_SPLITS:
            problems.append(f"{where}: split {row.split!r} is not one of {', '.join(KNOWN_SPLITS)}")
    return problems


def listing_problems(rows: list[Row], folder: Path) -> list[str]:
    """An image listed twice with two labels or splits; a listed image that is not there."""
    problems: list[str] = []
    first: dict[PurePosixPath, Row] = {}
    for row in rows:
        seen = first.setdefault(row.path, row)
        if (seen.label, seen.split) != (row.label, row.split):
            twice = "labels" if seen.label != row.label else "splits"
            problems.append(
                f"{row.path}: listed twice with two {twice} (line {seen.line}: "
                f"{_labelled(seen)}; line {row.line}: {_labelled(row)})"
            )
    for row in first.values():
        try:
            there = (folder / row.path).exists() or (folder / row.path).is_symlink()
        except OSError as exc:  # a name too long, say
            problems.append(f"line {row.line}: {row.path}: cannot be looked up ({exc.strerror})")
            continue
        if not there:
            problems.append(f"line {row.line}: {row.path}: no such file")
    return problems


def _labelled(row: Row) -> str:
    return repr(row.label) + (f" in {row.split}" if row.split else "")


def unique(rows: list[Row]) -> list[Row]:
    """Each image once (a line repeated with the same label and split is the same image)."""
    first: dict[PurePosixPath, Row] = {}
    for row in rows:
        first.setdefault(row.path, row)
    return list(first.values())


def read_listed(folder: Path, row: Row) -> bytes:
    """A listed image's bytes, refused with the reason unless it is a regular file inside
    ``folder`` (a resolved, absolute path) and within the size limit."""
    where = f"line {row.line}: {row.path}"
    try:
        real = (folder / row.path).resolve()
    except (OSError, RuntimeError) as exc:  # a loop of links
        raise ValueError(f"{where}: cannot be resolved ({exc})") from None
    if not real.is_relative_to(folder):
        raise ValueError(f"{where}: a link leading out of the labels file's folder")
    try:
        handle = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise ValueError(f"{where}: cannot be opened ({exc.strerror})") from None
    with os.fdopen(handle, "rb") as file:
        facts = os.fstat(file.fileno())
        if not stat.S_ISREG(facts.st_mode):
            raise ValueError(f"{where}: not a regular file")
        if facts.st_size > MAX_FILE_BYTES:
            raise ValueError(
                f"{where}: {facts.st_size} bytes, over the limit of {MAX_FILE_BYTES} per file"
            )
        return file.read()


def labels_content_sha256(path: Path) -> str:
    """One hash of a labels file and every image it lists (each by name and content): what
    tells DVC the data changed. A file that cannot be read counts by its refusal (ingest
    names it)."""
    require_labels_file(path)
    digest = hashlib.sha256(sha256_file(path).encode())
    try:
        rows = listed_rows(path)
    except IngestError as exc:
        digest.update(str(exc).encode())
        return digest.hexdigest()
    folder = path.parent.resolve()
    for row in sorted(rows, key=lambda row: str(row.path)):
        try:
            content = hashlib.sha256(read_listed(folder, row)).hexdigest()
        except ValueError as exc:
            content = str(exc)
        digest.update(f"{row.path}\0{content}\n".encode())
    return digest.hexdigest()
