"""uv.lock: one universal, hashed lock that agrees with pyproject.toml (CI also runs
`uv lock --check`, which resolves again against the index), and an installed distribution
that carries the pipeline and its components."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.support import ROOT, read_lock

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = read_lock()
PROJECT = next(p for p in LOCK["package"] if p["name"] == "image-finetune")


def declared(requirements: list[str]) -> list[tuple]:
    """(name, extras, specifier) of each requirement, comparable with the lock's entries."""
    parsed = [Requirement(text) for text in requirements]
    return sorted(
        (r.name, tuple(sorted(r.extras)), str(SpecifierSet(str(r.specifier)))) for r in parsed
    )


def locked(entries: list[dict]) -> list[tuple]:
    return sorted(
        (e["name"], tuple(sorted(e.get("extras", []))), str(SpecifierSet(e.get("specifier", ""))))
        for e in entries
    )


def test_the_lock_was_made_from_this_pyproject():
    project = PYPROJECT["project"]
    wanted = project["dependencies"] + [
        text for extra in project["optional-dependencies"].values() for text in extra
    ]
    assert locked(PROJECT["metadata"]["requires-dist"]) == declared(wanted)
    assert locked(PROJECT["metadata"]["requires-dev"]["dev"]) == declared(
        PYPROJECT["dependency-groups"]["dev"]
    )


def test_every_locked_file_has_a_hash():
    unhashed = [
        f"{p['name']} {p['version']}: {artifact.get('url')}"
        for p in LOCK["package"]
        if "registry" in p["source"]
        for artifact in [*p.get("wheels", []), *([p["sdist"]] if "sdist" in p else [])]
        if not artifact.get("hash", "").startswith("sha256:")
    ]
    assert unhashed == []


def test_the_lock_is_universal():
    assert "environments" not in LOCK.get("manifest", {})  # not narrowed to this platform
    names = {p["name"] for p in LOCK["package"]}
    assert {"tensorflow-cpu", "tensorflow"} <= names  # Linux x86_64, and everywhere else


def test_the_installed_distribution_carries_the_pipeline_and_its_components(tmp_path):
    code = (
        "import image_finetune.pipelines.cli as cli, image_finetune.components.train; "
        "print(cli.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    # Installed through src/image_finetune/pipelines, the link to the top-level folder.
    assert Path(found.stdout.strip()).resolve() == ROOT / "pipelines" / "cli.py"
    script = Path(sys.executable).parent / "image-finetune-pipeline"
    shown = subprocess.run(
        [str(script), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0 and "compile" in shown.stdout, shown.stderr


SUPPORTED_PYTHONS = (11, 12, 13)  # requires-python ">=3.11,<3.14"


def wheel_fits(filename: str, minor: int, platform: str) -> bool:
    """Whether a wheel installs on CPython 3.<minor> on ``platform`` (a tag fragment)."""
    python, abi, platforms = filename.removesuffix(".whl").split("-")[-3:]
    pythons = python.split(".")
    fits_python = (
        "py3" in pythons
        or f"cp3{minor}" in pythons
        or (abi == "abi3" and any(p.startswith("cp3") and int(p[3:]) <= minor for p in pythons))
    )
    return fits_python and any(p == "any" or platform in p for p in platforms.split("."))


def test_every_supported_python_gets_a_wheel_of_every_locked_binary():
    """Linux x86_64, CPython 3.11-3.13: no locked package with Linux wheels lacks one for a
    supported version (it would be built from source there, or not install at all)."""
    assert PYPROJECT["project"]["requires-python"] == ">=3.11,<3.14"
    missing = []
    for package in LOCK["package"]:
        wheels = [w["url"].rsplit("/", 1)[1] for w in package.get("wheels", [])]
        if not any("linux" in w and "x86_64" in w for w in wheels):
            continue  # pure Python, sdist only, or not for Linux (pywin32)
        missing += [
            f"{package['name']} {package['version']}: cp3{minor}"
            for minor in SUPPORTED_PYTHONS
            if not any(wheel_fits(w, minor, "x86_64") for w in wheels)
        ]
    assert missing == []
