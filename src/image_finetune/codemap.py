"""The package's own import graph: which module imports which (at any level, function
bodies included; ``TYPE_CHECKING`` blocks left out), its cycles, and the files a step's
code depends on (what its dvc.yaml stage lists as code deps).

    python -m image_finetune.codemap             # the import graph, one module a line
    python -m image_finetune.codemap --stages    # the dvc.yaml stages the step catalog implies
"""

from __future__ import annotations

import ast
import os
import sys
from functools import cache
from pathlib import Path

PACKAGE = "image_finetune"
ROOT = Path(__file__).resolve().parent


def module_files() -> dict[str, Path]:
    """Every module of the package, by dotted name, the linked subpackages (pipelines,
    components: links to the repository's top-level folders) included."""
    modules = {}
    found = (Path(folder, name) for folder, _, names in os.walk(ROOT, followlinks=True)
             for name in names if name.endswith(".py"))
    for path in sorted(found):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_names(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) for every import outside TYPE_CHECKING blocks."""
    found, stack = [], [tree]
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


def cycles() -> list[list[str]]:
    """Every import cycle (as the path that closes it); empty when the graph is acyclic."""
    graph, state, found = import_graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def closure(module: str) -> set[str]:
    """``module`` and every package module it imports, directly or not."""
    graph, seen, todo = import_graph(), set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(graph.get(current, ()))
    return seen


def code_files(module: str, project_root: Path) -> list[str]:
    """The source files ``module`` runs, relative to the project root, sorted; package
    ``__init__`` files that hold no code left out."""
    files = module_files()
    paths = [files[m] for m in closure(module)]
    kept = [p for p in paths if p.name != "__init__.py" or _has_code(p)]
    return sorted(p.relative_to(project_root).as_posix() for p in kept)


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
               for n in body)


def stage_entry(spec, project_root: Path) -> str:
    """A step's dvc.yaml stage, as the catalog and the import graph say it must be."""
    lines = [f"  {spec.name}:", f"    cmd: {spec.command()}"]
    lines += ["    always_changed: true"] if spec.always_changed else []
    lines += ["    deps:", *(f"      - {path}" for path in spec.watches)]
    lines += [f"      - {port.path}" for port in spec.reads]
    lines += [f"      - {f}" for f in code_files(f"{PACKAGE}.steps.{spec.module}", project_root)]
    lines += ["    params:", *(f"      - {key}" for key in spec.params), "    outs:"]
    lines += [f"      - {p.path}" if p.cache else f"      - {p.path}:\n          cache: false"
              for p in spec.writes]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    """Print the import graph, or the dvc.yaml stages with ``--stages``."""
    if "--stages" in argv:
        from image_finetune.steps.spec import STAGES

        print("stages:\n" + "\n".join(stage_entry(s, ROOT.parents[1]) for s in STAGES), end="")
        return
    for module, targets in sorted(import_graph().items()):
        short = sorted(t.removeprefix(f"{PACKAGE}.") for t in targets)
        print(f"{module.removeprefix(f'{PACKAGE}.') or PACKAGE} -> {', '.join(short) or '-'}")
    found = cycles()
    print(f"\n{len(found)} cycle(s)" + "".join(f"\n  {' -> '.join(c)}" for c in found))


if __name__ == "__main__":
    main(sys.argv[1:])
