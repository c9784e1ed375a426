"""The package's own import graph (read by :mod:`image_finetune.codegraph`) printed, its
cycles, and the files a step's code depends on (what its dvc.yaml stage lists as code deps).

    python -m image_finetune.codemap             # the import graph, one module a line
    python -m image_finetune.codemap --stages    # the dvc.yaml stages the step catalog implies
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from image_finetune.codegraph import PACKAGE, ROOT, closure, import_graph, module_files


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
