"""Reading an image folder (a directory or a .tar(.gz) archive of one) in either accepted
layout (see :mod:`~image_finetune.data.layouts`): split folders, or class folders that
ingest splits by each file's content (:mod:`~image_finetune.data.stable_split`).

The folder streams: each image is decoded and written to a scratch folder on disk, so memory
holds no split whatever the folder's size. Problems are collected over the whole folder and
raised once, naming the files; a folder in no accepted layout gets one message.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from tqdm import tqdm

from image_finetune.data.decoded import DecodedImages
from image_finetune.data.files import walk
from image_finetune.data.layouts import (
    CLASS_FOLDERS,
    UNSPLIT,
    Groups,
    Placement,
    choose_layout,
    is_image_name,
    place,
    place_folder,
    stray_problem,
)
from image_finetune.data.sources import RawDataset
from image_finetune.errors import IngestError


def read_image_folder(
    path: Path, image_size: int, how: str, scratch: Path, max_per_class: int | None = None
) -> RawDataset:
    """Read ``split/class/*.png|jpg|jpeg`` or ``class/*.png|jpg|jpeg`` from a directory or a
    .tar(.gz) archive; the decoded images are kept in ``scratch``, which must outlive the
    returned dataset.

    Images of another size than ``image_size`` are fitted ``how`` (see
    :data:`~image_finetune.data.images.FIT_MODES`). Classes are the train split's folders
    (the class folders, without splits), sorted; every other split must have exactly those
    classes. Hidden files (``.*``) and OS clutter (Thumbs.db, desktop.ini, __MACOSX) are
    ignored; anything else that is not an image in a class folder, a name that is not UTF-8,
    a link or an oversized file is an error naming the file. Without splits, the images keep
    the sha256 of their files, by which ingest splits them.
    """
    if not path.exists():
        raise IngestError(f"{path}: data source not found (set data.path or $IMAGE_FINETUNE_DATA)")
    problems: list[str] = []
    groups: Groups = {}
    folders: set[Placement] = set()
    unplaced: list[PurePosixPath] = []
    with DecodedImages(scratch, image_size, how, max_per_class) as images:
        for entry in tqdm(
            walk(path, problems), desc=f"decode {path.name}", unit="img", mininterval=1.0
        ):
            if entry.is_folder:
                folders.update(filter(None, [place_folder(entry.path)]))
                continue
            placement = place(entry.path)
            if placement is None:
                unplaced.append(entry.path)
                continue
            groups.setdefault(placement.group, []).append(entry.path)
            if not is_image_name(entry.path):
                problems.append(f"{entry.path}: not an image file (expected .png, .jpg or .jpeg)")
                continue
            images.add(
                (placement.split, placement.class_name),
                placement.name,
                entry.read,
                problems,
                hashed=placement.layout == CLASS_FOLDERS,
            )
        images.finish()
    if not groups and not unplaced:  # not a file: the folders alone say what was meant
        groups = {folder.group: [] for folder in folders}
    layout, root = choose_layout(path, groups, unplaced)
    problems.extend(stray_problem(rel, layout) for rel in unplaced)
    if problems:
        raise IngestError(f"{path}: bad files in the image folder", problems)
    placed = [p for p in folders if p.group == (layout, root)]
    class_dirs: dict[str, set[str]] = {}
    for split, class_name in [(p.split, p.class_name) for p in placed] + list(images.buckets):
        class_dirs.setdefault(split, set()).add(class_name)
    reference = UNSPLIT if layout == CLASS_FOLDERS else "train"
    if reference not in class_dirs:
        raise IngestError(f"{path}: no train/ split found")
    return images.dataset(path, class_dirs, reference)
