"""Where code lives: no import cycles, imports only down the layers, no step importing another
step, components importing only steps, no reaching into other modules' private names, short
functions; and dvc.yaml, the CLI and the Kubeflow components agree with the step catalog
(src/image_finetune/steps/spec.py)."""

import ast
import inspect
import shlex
from pathlib import Path

import pytest
import typer.main
import yaml

from image_finetune import codegraph, codemap, components
from image_finetune.cli import app
from image_finetune.steps.spec import ALL_SECTIONS, CATALOG, STAGES

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "src", ROOT / "components", ROOT / "pipelines"]
MAX_FUNCTION_LINES = 60

# The layers (imports run down) are codemap's: LAYERS and layer_of.
LAYERS, layer_of = codemap.LAYERS, codemap.layer_of
# Third-party packages that belong to one layer and never below it.
FORBIDDEN_BELOW = {
    "mlflow": "services",
    "boto3": "services",
    "fastapi": "serving",
    "uvicorn": "steps",
    "typer": "adapters",
    "kfp": "adapters",
    "kubernetes": "services",
}


def python_files():
    for folder in SOURCES:
        yield from sorted(folder.rglob("*.py"))


def test_the_package_has_no_import_cycle():
    assert codemap.cycles() == []


def test_a_cycle_would_be_found(monkeypatch):
    graph = {
        "image_finetune.a": frozenset({"image_finetune.b"}),
        "image_finetune.b": frozenset({"image_finetune.a"}),
    }
    monkeypatch.setattr(codemap, "import_graph", lambda: graph)
    assert codemap.cycles() == [["image_finetune.a", "image_finetune.b", "image_finetune.a"]]


def test_imports_run_down_the_layers():
    upward = [
        f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
        for module, targets in codegraph.import_graph().items()
        for target in targets
        if LAYERS[layer_of(target)] > LAYERS[layer_of(module)]
    ]
    assert upward == []


def test_lower_layers_do_not_use_the_libraries_of_higher_ones():
    found = []
    for module, path in codegraph.module_files().items():
        rank = LAYERS[layer_of(module)]
        for name, _ in codegraph.imported_names(ast.parse(path.read_text())):
            owner = FORBIDDEN_BELOW.get(name.split(".")[0])
            if owner and rank < LAYERS[owner]:
                found.append(f"{module} imports {name}")
    assert found == []


# The modules every step may read: the catalog, and the layout (file names and readers).
SHARED_STEP_MODULES = ("spec", "layout")
# The train stage of ``dvc repro`` is the retrain loop, composed of the steps that the
# Kubeflow pipeline runs as separate tasks per rung: it alone runs other steps.
COMPOSED_STEPS = {"climb_ladder": {"train_rung", "evaluate", "gate_attempt", "select"}}


def step_to_step_imports(graph: dict[str, frozenset[str]]) -> list[str]:
    """Imports of one catalog step's module by another step module (steps hand each other
    files, named and read back by steps.layout, never code). A module of steps/ that no
    catalog entry names (http_protocol, live_metrics) is a helper of its step, not a step."""
    steps = {f"image_finetune.steps.{spec.module}" for spec in CATALOG.values()}
    shared = {f"image_finetune.steps.{name}" for name in SHARED_STEP_MODULES}
    found = []
    for module, targets in graph.items():
        if not module.startswith("image_finetune.steps."):
            continue
        allowed = {
            f"image_finetune.steps.{name}"
            for name in COMPOSED_STEPS.get(module.rsplit(".", 1)[1], ())
        }
        found += [
            f"{module} imports {target}"
            for target in sorted(targets)
            if target in steps - shared - allowed
        ]
    return found


def test_no_step_imports_another_step():
    assert step_to_step_imports(codegraph.import_graph()) == []


def test_a_step_importing_a_step_would_be_found():
    graph = {
        "image_finetune.steps.register": frozenset(
            {"image_finetune.steps.final_gate", "image_finetune.steps.layout"}
        )
    }
    assert step_to_step_imports(graph) == [
        "image_finetune.steps.register imports image_finetune.steps.final_gate"
    ]


def non_step_imports(path: Path) -> list[str]:
    """First-party imports of a component's file (TYPE_CHECKING ones included) that are not
    of a step module or of the components package itself."""
    allowed = ("image_finetune.steps.", "image_finetune.components.")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        found += [
            f"{path.name} imports {name}"
            for name in names
            if name.split(".")[0] == "image_finetune" and not name.startswith(allowed)
        ]
    return found


def test_components_import_only_steps():
    """A component is a thin adapter over one step: what else it needs (file names,
    params parsing, the metrics it logs) comes through the steps layer."""
    files = sorted((ROOT / "components").glob("*.py"))
    assert files and [use for path in files for use in non_step_imports(path)] == []


def test_a_component_importing_the_domain_would_be_found(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("def f():\n    from image_finetune.inference import MODEL_FILE\n")
    assert non_step_imports(sneaky) == ["sneaky.py imports image_finetune.inference"]


def private_uses(path: Path) -> list[str]:
    """Uses of another first-party module's underscore names in one file."""
    tree, found, modules = ast.parse(path.read_text()), [], set()
    first_party = ("image_finetune", "tests")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(first_party):
            found += [
                f"from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")
            ]
            modules |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            modules |= {
                (a.asname or a.name).split(".")[0]
                for a in node.names
                if a.name.startswith(first_party)
            }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return [f"{path.relative_to(ROOT)}: {use}" for use in found]


def test_no_module_reaches_into_another_modules_private_names():
    assert [use for path in python_files() for use in private_uses(path)] == []


def test_the_private_name_check_finds_both_forms(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text(
        "from image_finetune.data.sources import _strip_common_root\n"
        "from image_finetune.registry import client\nclient._cached_client\n"
    )
    sneaky = sneaky.rename(ROOT / "tests" / "unit" / f".sneaky_{id(sneaky)}.py")
    try:
        assert len(private_uses(sneaky)) == 2
    finally:
        sneaky.unlink()


def body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end: the formatter gives
    each parameter of a long signature a line of its own, which is no logic."""
    body = function.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return function.end_lineno - body[0].lineno + 1


def test_functions_stay_short():
    long = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = body_lines(node)
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert long == []


# The one module that knows the classifier's layers by name (its builder: the rest reach the
# parts through training.model.Classifier), and a backbone's own definition, which loads its
# weights layer by layer.
LAYER_NAME_OWNERS = (
    "src/image_finetune/training/model.py",
    "src/image_finetune/efficientnet_lite.py",
)


def _names_a_layer(call: ast.Call) -> bool:
    """``x.get_layer("name")`` (a literal or formatted string, or ``name=``)."""
    return (
        isinstance(call.func, ast.Attribute)
        and call.func.attr == "get_layer"
        and (
            any(isinstance(a, ast.Constant | ast.JoinedStr) for a in call.args)
            or any(k.arg == "name" for k in call.keywords)
        )
    )


def _filters_layers_by_name(node: ast.AST) -> bool:
    """A loop or comprehension over ``x.layers`` that reads each layer's ``.name``."""
    if isinstance(node, ast.For):
        loops = [(node.target, node.iter)]
    elif isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
        loops = [(g.target, g.iter) for g in node.generators]
    else:
        return False
    return any(
        isinstance(it, ast.Attribute)
        and it.attr == "layers"
        and isinstance(target, ast.Name)
        and any(
            isinstance(n, ast.Attribute)
            and n.attr == "name"
            and isinstance(n.value, ast.Name)
            and n.value.id == target.id
            for n in ast.walk(node)
        )
        for target, it in loops
    )


def layer_name_lookups(path: Path) -> list[str]:
    """Where one file finds a model's layers by their names."""
    found = [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Call) and _names_a_layer(node)) or _filters_layers_by_name(node)
    ]
    return [f"{path.relative_to(ROOT)}:{line}" for line in found]


def test_only_the_model_module_looks_layers_up_by_name():
    assert [
        use
        for path in python_files()
        if str(path.relative_to(ROOT)) not in LAYER_NAME_OWNERS
        for use in layer_name_lookups(path)
    ] == []


def test_the_layer_name_check_finds_both_forms(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text(
        'head = classifier.get_layer("head")\n'
        'x = [layer for layer in model.layers if layer.name == "pool"]\n'
        "for layer in model.layers:\n    if layer.name in NAMES:\n        pass\n"
        "ok = model.get_layer(index=2), [p.name for p in paths]\n"
    )
    sneaky = sneaky.rename(ROOT / "tests" / "unit" / f".sneaky_{id(sneaky)}.py")
    try:
        assert len(layer_name_lookups(sneaky)) == 3
    finally:
        sneaky.unlink()


# -- dvc.yaml against the catalog ------------------------------------------------------------


@pytest.fixture(scope="module")
def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_dvc_yaml_has_one_stage_per_catalog_stage_in_run_order(dvc_stages):
    assert list(dvc_stages) == [spec.name for spec in STAGES]


@pytest.mark.parametrize("spec", STAGES, ids=lambda s: s.name)
def test_each_stage_is_what_its_step_declares(spec, dvc_stages):
    expected = yaml.safe_load(codemap.stage_entry(spec, ROOT))[spec.name]
    stage = dvc_stages[spec.name]
    assert shlex.split(stage["cmd"]) == shlex.split(expected["cmd"])
    assert stage["deps"] == expected["deps"], (
        f"dvc.yaml's {spec.name} deps differ; `python -m image_finetune.codemap --stages` "
        "prints what they must be"
    )
    assert stage["params"] == expected["params"]
    assert stage["outs"] == expected["outs"]


@pytest.mark.parametrize("spec", STAGES, ids=lambda s: s.name)
def test_each_stage_lists_the_code_its_step_runs(spec, dvc_stages):
    """The code deps are the step module's whole import closure: evaluate, for one, runs
    inference and metrics code outside its own module."""
    code = {d for d in dvc_stages[spec.name]["deps"] if d.startswith("src/")}
    module = f"image_finetune.steps.{spec.module}"
    assert f"src/image_finetune/steps/{spec.module}.py" in code
    imported = {f"src/{m.replace('.', '/')}.py" for m in codegraph.closure(module)}
    assert code == {f for f in imported if (ROOT / f).exists()}


# -- the CLI against the catalog -------------------------------------------------------------


def cli_commands() -> dict:
    return typer.main.get_command(app).commands


def step_imports(function) -> set[str]:
    """The step modules a function imports (``image_finetune.steps.<module>``; the catalog
    and the layout are not steps)."""
    tree = ast.parse(inspect.getsource(function).lstrip())
    shared = {f"image_finetune.steps.{name}" for name in SHARED_STEP_MODULES}
    return {
        node.module.removeprefix("image_finetune.steps.")
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("image_finetune.steps.")
        and node.module not in shared
    }


def test_every_cli_command_is_a_catalog_step_and_calls_exactly_that_step():
    commands = cli_commands()
    for name, command in commands.items():
        assert name in CATALOG, f"image-finetune {name} is not a step of the catalog"
        assert step_imports(inspect.unwrap(command.callback)) == {CATALOG[name].module}, name


def test_cli_path_defaults_are_the_declared_places():
    for name, command in cli_commands().items():
        options = {param.opts[0]: param.default for param in command.params if param.opts}
        for option, path in CATALOG[name].paths.items():
            flag = CATALOG[name].path_option(option).flag
            assert Path(options[flag]) == path, f"image-finetune {name} {flag}"


# -- the Kubeflow components against the catalog --------------------------------------------


def component_functions():
    for name in components.__all__:
        yield name, getattr(components, name).python_func


def test_every_component_calls_exactly_one_step():
    for name, function in component_functions():
        assert len(step_imports(function)) == 1, f"component {name}"


def test_components_receive_exactly_the_sections_their_step_reads():
    by_module = {spec.module: spec for spec in CATALOG.values()}
    for name, function in component_functions():
        [module] = step_imports(function)
        received = set(inspect.signature(function).parameters) & set(ALL_SECTIONS)
        assert received == set(by_module[module].sections), f"component {name}"


def test_test_module_basenames_are_unique_across_tiers():
    """pytest imports test modules by basename (rootdir-relative, no package per tier): two
    tiers with the same file name stop the whole run at collection."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(ROOT)} and {path.relative_to(ROOT)}")
        seen.setdefault(path.name, path)
    assert not clashes, clashes
