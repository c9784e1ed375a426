"""The package's own import graph (read by :mod:`image_finetune.codegraph`) printed, its
cycles, and the files a step's code depends on (what its dvc.yaml stage lists as code deps).

    python -m image_finetune.codemap             # the import graph, one module a line
    python -m image_finetune.codemap --stages    # the dvc.yaml stages the step catalog implies
    python -m image_finetune.codemap --dot | tred | dot -Tsvg -o docs/import-graph.svg
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from image_finetune.codegraph import PACKAGE, ROOT, closure, import_graph, module_files

# Imports run down: each module may import its own layer and the layers below it
# (tests/unit/test_architecture.py holds the package to it).
LAYERS = {"domain": 0, "services": 1, "serving": 2, "steps": 3, "adapters": 4}
SERVICES = ("registry", "kube")
ADAPTERS = ("cli", "console", "codemap", "pipelines", "components")
LAYER_COLOURS = {
    "domain": "#e8f1fa",
    "services": "#fdf1dc",
    "serving": "#e6f4e6",
    "steps": "#f3e8f7",
    "adapters": "#f1f1f1",
}


def layer_of(module: str) -> str:
    """The layer a package module belongs to (see ``LAYERS``)."""
    name = module.removeprefix(PACKAGE).lstrip(".")
    top = name.split(".")[0]
    if top in SERVICES:
        return "services"
    if top in ("serving", "steps"):
        return top
    if top in ADAPTERS or not name:
        return "adapters"
    return "domain"


def cycles() -> list[list[str]]:
    """Every import cycle (as the path that closes it); empty when the graph is acyclic."""
    graph, state, found = import_graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def code_files(module: str, project_root: Path) -> list[str]:
    """The source files ``module`` runs, relative to the project root, sorted; package
    ``__init__`` files that hold no code left out."""
    files = module_files()
    paths = [files[m] for m in closure(module)]
    kept = [p for p in paths if p.name != "__init__.py" or _has_code(p)]
    return sorted(p.relative_to(project_root).as_posix() for p in kept)


def _has_code(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def stage_entry(spec, project_root: Path) -> str:
    """A step's dvc.yaml stage, as the catalog and the import graph say it must be."""
    lines = [f"  {spec.name}:", f"    cmd: {spec.command()}"]
    lines += ["    always_changed: true"] if spec.always_changed else []
    lines += ["    deps:", *(f"      - {path}" for path in spec.watches)]
    lines += [f"      - {port.path}" for port in spec.reads]
    lines += [f"      - {f}" for f in code_files(f"{PACKAGE}.steps.{spec.module}", project_root)]
    lines += ["    params:", *(f"      - {key}" for key in spec.params), "    outs:"]
    lines += [
        f"      - {p.path}" if p.cache else f"      - {p.path}:\n          cache: false"
        for p in spec.writes
    ]
    return "\n".join(lines) + "\n"


def package_of(module: str) -> str:
    """The node a module is drawn as: its subpackage, or itself at the top level."""
    name = module.removeprefix(PACKAGE).lstrip(".") or PACKAGE
    return name.split(".")[0]


def dot_graph() -> str:
    """The import graph between subpackages and top-level modules, one box per layer, in
    Graphviz's language (the package's own ``__init__`` left out: it imports nothing)."""
    edges = {
        (package_of(m), package_of(t))
        for m, targets in import_graph().items()
        for t in targets
        if package_of(m) != package_of(t)
    }
    nodes = {package_of(m): layer_of(m) for m in import_graph() if m != PACKAGE}
    lines = ["digraph imports {", "  rankdir=TB; node [shape=box, style=filled, fontsize=11];"]
    for layer in sorted(LAYERS, key=LAYERS.__getitem__, reverse=True):
        lines += [
            f'  subgraph "cluster_{layer}" {{',
            f'    label="{layer}";',
            f'    style=filled; color="{LAYER_COLOURS[layer]}";',
        ]
        lines += [
            f'    "{n}" [fillcolor=white];' for n, lay in sorted(nodes.items()) if lay == layer
        ]
        lines.append("  }")
    lines += [f'  "{a}" -> "{b}";' for a, b in sorted(edges) if a in nodes and b in nodes]
    return "\n".join([*lines, "}"]) + "\n"


def main(argv: list[str]) -> None:
    """Print the import graph, the dvc.yaml stages with ``--stages``, or the graph between
    subpackages in Graphviz's language with ``--dot``."""
    if "--dot" in argv:
        print(dot_graph(), end="")
        return
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
