"""The benchmarks under bench/ still fit the package: every name a script imports from
image_finetune is defined where it imports it from (checked on the source, without
importing TensorFlow). A refactor that moves a function breaks this test, not a benchmark
run a quarter of an hour in."""

import ast

import pytest

from image_finetune.codegraph import imported_names, module_files
from tests.support import ROOT

SCRIPTS = sorted((ROOT / "bench").glob("*.py"))


def defined_names(tree: ast.Module) -> set[str]:
    """What a module defines or imports at its top level."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_every_name_a_benchmark_imports_exists(script):
    modules = module_files()
    missing = []
    for module, names in imported_names(ast.parse(script.read_text())):
        if not module.startswith("image_finetune"):
            continue
        assert module in modules, f"{script.name}: no module {module}"
        defined = defined_names(ast.parse(modules[module].read_text()))
        submodules = {m.rsplit(".", 1)[1] for m in modules if m.startswith(module + ".")}
        missing += [f"{module}.{n}" for n in names if n not in defined | submodules]
    assert missing == [], f"{script.name} imports names that do not exist: {missing}"
