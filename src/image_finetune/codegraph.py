"""The package's own import graph, read from its source: which module imports which (at any
level, function bodies included; ``TYPE_CHECKING`` blocks left out), the closure of a
module, and a digest of the source a module runs. The cache keys take that digest (a cache
dies with any change to the code that shaped it); ``codemap`` prints the graph and the dvc.yaml
code deps from the same functions."""

from __future__ import annotations

import ast
import hashlib
import os
from functools import cache
from pathlib import Path

PACKAGE = "image_finetune"
ROOT = Path(__file__).resolve().parent


def module_files() -> dict[str, Path]:
    """Every module of the package, by dotted name, the linked subpackages (pipelines,
    components: links to the repository's top-level folders) included."""
    modules = {}
    found = (
        Path(folder, name)
        for folder, _, names in os.walk(ROOT, followlinks=True)
        for name in names
        if name.endswith(".py")
    )
    for path in sorted(found):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_names(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) for every import outside TYPE_CHECKING blocks."""
    found: list[tuple[str, list[str]]] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if _is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, [alias.name for alias in node.names]))
        stack.extend(ast.iter_child_nodes(node))
    return found


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Each package module -> the package modules it imports."""
    modules = module_files()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for module, names in imported_names(ast.parse(path.read_text())):
            if module.split(".")[0] != PACKAGE:
                continue
            subs = {f"{module}.{n}" for n in names} & modules.keys()
            targets |= subs or {module}
        graph[name] = frozenset(targets - {name})
    return graph


def closure(module: str) -> set[str]:
    """``module`` and every package module it imports, directly or not."""
    graph, seen, todo = import_graph(), set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(graph.get(current, ()))
    return seen


def source_digest(*modules: str) -> str:
    """sha256 of the source of every module in the modules' closures (name and text, in name
    order): any edit, added import or renamed module in there changes it. Read afresh on each
    call (the graph is cached per process; an import added since is a new process's)."""
    files = module_files()
    digest = hashlib.sha256()
    for name in sorted(set().union(*(closure(m) for m in modules)) & files.keys()):
        digest.update(f"{name}\0{files[name].read_text()}\0".encode())
    return digest.hexdigest()
