"""The folder layouts an image folder may have, and where each file sits in them.

Two layouts of folders are accepted (a labels file is the third way, see
:mod:`~image_finetune.data.labels_file`), each optionally wrapped in one folder (archives
often are):

- split folders: ``split/class/image`` with splits train, test and optionally validation;
- class folders: ``class/image``, as Keras' ``image_dataset_from_directory`` and
  torchvision's ``ImageFolder`` read them; ingest holds out test and validation.

Pure functions of relative paths: nothing here reads a file. A folder that fits neither
layout gets one message naming the accepted layouts and the one it looks closest to, not
one line per file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from image_finetune.errors import IngestError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
KNOWN_SPLITS = ("train", "validation", "test")
UNSPLIT = "unsplit"  # the images of a source without splits, before ingest splits them

SPLIT_FOLDERS = "split folders"
CLASS_FOLDERS = "class folders"
ACCEPTED_LAYOUTS = (
    f"{SPLIT_FOLDERS}: split/class/image, splits {', '.join(KNOWN_SPLITS)} "
    "(validation optional: held out of train when absent)",
    f"{CLASS_FOLDERS}: class/image (ingest holds out data.test_fraction and "
    "data.validation_fraction of each class)",
    "a labels file: data.source: labels, data.path a .csv or .jsonl file with the columns "
    "path,label and optionally split (paths relative to the file)",
)
EXAMPLES = 3


@dataclass(frozen=True)
class Placement:
    """Where a file sits in a layout: its wrapping folder (None: none), split and class."""

    layout: str
    root: str | None
    split: str
    class_name: str
    name: str  # the file as the dataset names it: split/class/file or class/file

    @property
    def group(self) -> tuple[str, str | None]:
        return self.layout, self.root


def place(rel: PurePosixPath) -> Placement | None:
    """Where ``rel`` sits as an image of either layout (None: in neither)."""
    parts = rel.parts
    if len(parts) == 4 and parts[0] not in KNOWN_SPLITS:
        return _in_split_folders(parts[0], parts[1:])
    if len(parts) == 3 and parts[0] in KNOWN_SPLITS:
        return _in_split_folders(None, parts)
    if len(parts) == 3:
        return _in_class_folders(parts[0], parts[1:])
    if len(parts) == 2:
        return _in_class_folders(None, parts)
    return None


def place_folder(rel: PurePosixPath) -> Placement | None:
    """Where a folder sits as a class folder of either layout (None: it is not one)."""
    return place(rel / "_")


def _in_split_folders(root: str | None, parts: tuple[str, ...]) -> Placement | None:
    split, class_name, file = parts
    if split not in KNOWN_SPLITS:
        return None
    return Placement(SPLIT_FOLDERS, root, split, class_name, f"{split}/{class_name}/{file}")


def _in_class_folders(root: str | None, parts: tuple[str, ...]) -> Placement | None:
    class_name, file = parts
    if class_name in KNOWN_SPLITS:  # a split folder without class folders in it
        return None
    return Placement(CLASS_FOLDERS, root, UNSPLIT, class_name, f"{class_name}/{file}")


def is_image_name(rel: PurePosixPath) -> bool:
    """Whether the name says PNG or JPEG (the bytes are checked when decoded)."""
    return rel.suffix.lower() in IMAGE_SUFFIXES


Groups = dict[tuple[str, str | None], list[PurePosixPath]]  # the files placed in each


def choose_layout(
    source: object, groups: Groups, unplaced: list[PurePosixPath]
) -> tuple[str, str | None]:
    """The one layout (and wrapping folder) the files are in. A few stray files beside it are
    left to be named one by one; anything else ends in one message (see
    :func:`layout_message`)."""
    if len(groups) == 1:
        group, files = next(iter(groups.items()))
        if len(unplaced) <= len(files):
            return group
    raise IngestError(layout_message(source, groups, unplaced))


def stray_problem(rel: PurePosixPath, layout: str) -> str:
    """The line naming a file outside the layout the rest of the folder is in."""
    if layout == SPLIT_FOLDERS:
        return f"{rel}: not at split/class/file (splits: {', '.join(KNOWN_SPLITS)})"
    return f"{rel}: not at class/file (images sit in their class's folder)"


def layout_message(source: object, groups: Groups, unplaced: list[PurePosixPath]) -> str:
    """One message: the accepted layouts, and which one the folder looks closest to."""
    accepted = "\n".join(f"  - {layout}" for layout in ACCEPTED_LAYOUTS)
    count = sum(map(len, groups.values())) + len(unplaced)
    if count == 0:
        return f"{source}: no images found; the accepted layouts are:\n{accepted}"
    closest, why = closest_layout(groups, unplaced)
    return (
        f"{source}: its {count} files are in none of the accepted layouts:\n{accepted}\n"
        f"It looks closest to {closest}: {why}"
    )


def closest_layout(groups: Groups, unplaced: list[PurePosixPath]) -> tuple[str, str]:
    """The layout the files look closest to, and what keeps them from it."""
    if groups:
        (layout, root), files = max(groups.items(), key=lambda item: len(item[1]))
        others = unplaced + [
            rel for group, placed in groups.items() if group != (layout, root) for rel in placed
        ]
        where = f" (in {root}/)" if root else ""
        return layout, (
            f"{len(files)} of the {len(files) + len(others)} files fit it{where}; "
            f"the others do not, e.g. {_examples(sorted(others))}"
        )
    if all(len(rel.parts) == 1 for rel in unplaced):
        return CLASS_FOLDERS, (
            f"the files lie loose, in no folder (e.g. {_examples(unplaced)}): "
            "put each class's images in a folder named after the class, or "
            "list them in a labels file"
        )
    if any(part in KNOWN_SPLITS for rel in unplaced for part in rel.parts[:-1]):
        return SPLIT_FOLDERS, (
            f"split folders are there but the images are not "
            f"split/class/image inside them (e.g. {_examples(unplaced)}); "
            "point data.path at the folder that holds the split folders"
        )
    depth = Counter(len(rel.parts) for rel in unplaced).most_common(1)[0][0]
    return CLASS_FOLDERS, (
        f"the images sit {depth - 1} folders deep (e.g. "
        f"{_examples(unplaced)}), not directly in their class's folder: "
        "point data.path at the folder that holds the class folders, or list "
        "the images in a labels file"
    )


def _examples(items: Iterable) -> str:
    listed = [str(item) for item in items]
    shown = ", ".join(listed[:EXAMPLES])
    return shown + (f" and {len(listed) - EXAMPLES} more" if len(listed) > EXAMPLES else "")
