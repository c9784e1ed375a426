"""The built distribution: one top-level package, ``image_finetune``, with the Kubeflow
pipeline and its components inside it (image_finetune.pipelines, image_finetune.components),
so nothing named plainly ``pipelines`` or ``components`` lands in site-packages."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support import ROOT

# What the Docker image copies before `pip install .` (infra/docker/Dockerfile.cpu).
BUILD_INPUTS = ("pyproject.toml", "README.md", "src", "pipelines", "components")


def build_wheel(source: Path, out: Path) -> Path:
    """A wheel built by the project's own build backend (setuptools, from the dev group),
    as `pip install .` builds it, without build isolation (no index needed)."""
    code = f"from setuptools import build_meta; print(build_meta.build_wheel({str(out)!r}))"
    built = subprocess.run(
        [sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return out / built.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    with zipfile.ZipFile(build_wheel(source, tmp_path_factory.mktemp("dist"))) as built:
        yield built


def test_the_wheel_installs_one_top_level_package(wheel):
    tops = {Path(name).parts[0] for name in wheel.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"image_finetune"}


def test_the_pipeline_and_its_components_are_inside_it(wheel):
    names = set(wheel.namelist())
    for folder in ("pipelines", "components"):
        expected = {
            f"image_finetune/{folder}/{path.relative_to(ROOT / folder).as_posix()}"
            for path in (ROOT / folder).rglob("*.py")
        }
        assert expected and expected <= names


def test_the_pipeline_command_runs_the_namespaced_module(wheel):
    [entry_points] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    scripts = wheel.read(entry_points).decode()
    assert "image-finetune-pipeline = image_finetune.pipelines.cli:app" in scripts
