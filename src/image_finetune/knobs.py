"""The knobs tuned per run, apart from the rest of params.yaml.

A run form (Kubeflow's) shows each knob as a typed field: the data path, the backbone and its
resolution, each rung's epochs and learning rate, and the gate's thresholds. The rest of each
section travels as a mapping; :func:`merge_knobs` puts the knobs back in their places and
:func:`parse_sections` validates the result with the typed config, so a bad value fails with
the key's params.yaml path whichever way it came in.

A mapping parameter (a protobuf Struct in Kubeflow) cannot hold null, so nulls are left out,
and a left-out field takes its config default. That is the same value for every nullable
field except the ones in :data:`SPELLED_NULLS`, whose default is not null: there a null is
written as a word, and read back as null.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

from image_finetune.config import Params, parse_params
from image_finetune.errors import ConfigError

# Knob -> its place in params.yaml (section, key). Rung knobs are rung<index>_<field>.
SECTION_KNOBS: dict[str, tuple[str, str]] = {
    "data_path": ("data", "path"),
    "backbone": ("model", "backbone"),
    "model_image_size": ("model", "image_size"),
    "min_accuracy": ("gate", "min_accuracy"),
    "min_macro_f1": ("gate", "min_macro_f1"),
    "min_class_recall": ("gate", "min_class_recall"),
    "max_latency_p95_ms": ("gate", "max_latency_p95_ms"),
}
RUNG_FIELDS = ("epochs", "learning_rate")
RUNG_KNOB = re.compile(rf"rung(\d+)_({'|'.join(RUNG_FIELDS)})")
# Nullable fields whose default is not null: how a null is written in a mapping parameter.
SPELLED_NULLS: dict[tuple[str, str], str] = {("train", "cache_boundary"): "none"}

KeyPath = tuple[str | int, ...]


def rung_knob(index: int, field: str) -> str:
    """The knob of rung ``index``'s ``field`` (``epochs`` or ``learning_rate``)."""
    return f"rung{index}_{field}"


def knob_names(rungs: int) -> list[str]:
    """Every knob of a pipeline compiled for a ladder of ``rungs`` rungs."""
    return [
        *SECTION_KNOBS,
        *(rung_knob(index, field) for index in range(rungs) for field in RUNG_FIELDS),
    ]


def knob_path(name: str) -> KeyPath:
    """Where knob ``name`` lives in params.yaml."""
    if name in SECTION_KNOBS:
        return SECTION_KNOBS[name]
    match = RUNG_KNOB.fullmatch(name)
    if match is None:
        raise ConfigError(
            f"{name!r} is not a pipeline parameter of params.yaml: expected one of "
            f"{', '.join(SECTION_KNOBS)}, rung<k>_epochs, rung<k>_learning_rate"
        )
    return ("train", "ladder", int(match[1]), match[2])


def dotted(path: Sequence[str | int]) -> str:
    """A params.yaml path as the typed config's errors write it: train.ladder.0.epochs."""
    return ".".join(str(part) for part in path)


def knob_values(params: Params) -> dict[str, Any]:
    """The knobs' values in ``params``."""
    tree = params.model_dump(mode="json", by_alias=True)
    values = {}
    for name in knob_names(len(params.train.ladder)):
        *parents, leaf = knob_path(name)
        values[name] = _node(tree, parents, name)[leaf]
    return values


def section_mappings(params: Params) -> dict[str, dict]:
    """Every section of ``params`` as a mapping parameter: nulls left out or spelled."""
    tree = params.model_dump(mode="json", by_alias=True)
    for (section, key), word in SPELLED_NULLS.items():
        if tree[section][key] is None:
            tree[section][key] = word
    return _without_nulls(tree)


def section_remainders(params: Params) -> dict[str, dict]:
    """What the knobs leave of each section of ``params``, as mapping parameters."""
    tree = section_mappings(params)
    for name in knob_names(len(params.train.ladder)):
        *parents, leaf = knob_path(name)
        del _node(tree, parents, name)[leaf]
    return tree


def merge_knobs(sections: dict[str, dict], knobs: dict[str, Any]) -> dict[str, dict]:
    """``sections`` (mapping parameters) with each knob put in its place; the sections are
    not changed. A knob whose key its section also holds is refused: one value, one place."""
    merged = copy.deepcopy(sections)
    for name, value in knobs.items():
        path = knob_path(name)
        *parents, leaf = path
        node = _node(merged, parents, name, create=True)
        if leaf in node:
            raise ConfigError(
                f"{dotted(path)} is the pipeline parameter {name}; leave it out "
                f"of the {path[0]} parameter"
            )
        node[leaf] = value
    return merged


def parse_sections(sections: dict[str, dict], source: str) -> Params:
    """Validated params from mapping parameters (spelled nulls read back); sections not
    given keep their defaults. Raises ConfigError naming every bad key."""
    raw = copy.deepcopy(sections)
    for (section, key), word in SPELLED_NULLS.items():
        if raw.get(section, {}).get(key) == word:
            raw[section][key] = None
    return parse_params(raw, source)


def _node(tree: dict, parents: list[str | int], knob: str, create: bool = False) -> dict:
    """The mapping at ``parents`` in ``tree`` (sections created where ``create``)."""
    node: Any = tree
    for depth, part in enumerate(parents):
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                rungs = len(node) if isinstance(node, list) else 0
                raise ConfigError(
                    f"{knob}: {dotted(parents[:depth])} has {rungs} rung(s), no rung {part}"
                )
            node = node[part]
        else:
            node = node.setdefault(part, {}) if create else node[part]
    return node


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value
