"""Extras per role: the core install runs the command line with every optional package
absent, and a command whose extra is missing names the extra to install, with the usage exit
code and no traceback (image_finetune.extras, console.reported)."""

import ast
import subprocess
import sys
import tomllib

import pytest

from image_finetune.errors import MissingExtraError
from image_finetune.extras import EXTRA_OF, missing_extra, raise_missing_extra, require
from tests.support import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
USAGE = 2


def run_without(packages: list[str], code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter where ``packages`` cannot be imported (as if their
    extra were not installed: ``import`` raises ModuleNotFoundError)."""
    block = "import sys\n" + "".join(f"sys.modules[{p!r}] = None\n" for p in packages)
    return subprocess.run(
        [sys.executable, "-c", block + code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_a_command_without_its_extra_names_it():
    """`image-finetune validate` without Great Expectations: the `validate` extra, before any
    data is read (the data path does not exist)."""
    done = run_without(
        ["great_expectations"],
        "from image_finetune.cli import app\n"
        "app(['validate', '--data', 'no/such/folder', '--out', 'no/such/out'])",
    )
    assert done.returncode == USAGE, done.stderr
    assert "pip install 'image-finetune[validate]'" in done.stderr
    assert "'great_expectations'" in done.stderr and "Traceback" not in done.stderr


def test_the_pipeline_command_without_kfp_names_the_pipeline_extra():
    """Its own module imports kfp: the message comes before any command is parsed."""
    done = run_without(
        ["kfp"],
        "import runpy\nrunpy.run_module('image_finetune.pipelines.cli', run_name='__main__')",
    )
    assert done.returncode == USAGE, done.stderr
    assert "pip install 'image-finetune[pipeline]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_core_command_line_imports_no_optional_package():
    """What a core install has: the CLI's help and `check-params` run with every optional
    package blocked."""
    done = run_without(
        sorted(EXTRA_OF), "from image_finetune.cli import app\napp(['check-params'])"
    )
    assert done.returncode == 0, done.stderr
    assert '"ladder"' in done.stdout


def test_require_names_the_extra_of_a_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError) as raised:
        require("onnxruntime")
    assert (raised.value.package, raised.value.extra) == ("onnxruntime", "engine")
    assert raised.value.exit_code == USAGE
    assert "pip install 'image-finetune[engine]'" in str(raised.value)


def test_other_missing_modules_keep_their_own_error():
    """A first-party module, an unknown package, or a missing part inside an installed
    package (a bug or a broken install, not a missing extra) is not reported as an extra."""
    for name in (
        "image_finetune.no_such_module",
        "no_such_package",
        "yaml.no_such_part",
        "numpy.no_such_part",
    ):
        error = ModuleNotFoundError(f"No module named {name!r}", name=name)
        assert missing_extra(error) is None
        with pytest.raises(ModuleNotFoundError) as raised:
            raise_missing_extra(error)
        assert raised.value is error


def test_every_extra_named_is_declared_and_all_holds_every_role():
    assert set(EXTRA_OF.values()) <= set(EXTRAS)
    [everything] = EXTRAS["all"]
    roles = set(everything.partition("[")[2].rstrip("]").split(","))
    assert roles == set(EXTRAS) - {"all", "backends"}


def test_great_expectations_is_imported_only_where_validation_runs():
    importers = set()
    for path in (ROOT / "src" / "image_finetune").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [node.args[0].value]
                if (
                    isinstance(node, ast.Call)
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                )
                else []
            )
            if any(str(n).startswith("great_expectations") for n in names):
                importers.add(path.relative_to(ROOT).as_posix())
    assert importers == {"src/image_finetune/validation/suites.py"}
