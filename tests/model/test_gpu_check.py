"""The one-command GPU check (bench/gpu_check.sh): its CPU dry run on the real tarball and
weights, on JAX, with the packages the device lacks (TensorFlow first) made unimportable."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import CIFAR_TARBALL, ROOT, WEIGHTS_DIR, locked_versions, missing_part

SCRIPT = ROOT / "bench" / "gpu_check.sh"
ABSENT_ON_DEVICE = (
    "tensorflow",
    "tensorflow_datasets",
    "mlflow",
    "great_expectations",
    "boto3",
    "kfp",
    "dvc",
    "sklearn",
)
BLOCKER = f"""
import sys

class DeviceAbsent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT_ON_DEVICE!r}:
            raise ImportError(f"{{name}} is not installed on the GPU machine")

sys.meta_path.insert(0, DeviceAbsent())
"""


def assets_from_shared(folder: Path) -> Path:
    """The layout ``--prepare`` makes, linked to ../shared (no wheels: keras is installed)."""
    for sub, source in (
        ("data", CIFAR_TARBALL),
        ("weights", WEIGHTS_DIR / "mobilenet_v2_1.0_imagenet_no_top.weights.h5"),
        ("weights", WEIGHTS_DIR / "efficientnet_lite0_imagenet_torch_layout.npz"),
    ):
        if not source.is_file():
            missing_part(f"{source} not found (set IMAGE_FINETUNE_SHARED)")
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / source.name).symlink_to(source)
    return folder


def run_check(tmp_path: Path, assets: Path, *args: str) -> subprocess.CompletedProcess:
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(blocker),
        "GPU_CHECK_ASSETS": str(assets),
    }
    env.pop("KERAS_BACKEND", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )


def test_dry_run_measures_every_phase_without_tensorflow(tmp_path):
    if importlib.util.find_spec("jax") is None:
        missing_part("jax is not installed (infra/setup.sh installs it)")
    assets = assets_from_shared(tmp_path / "assets")
    figures_file = tmp_path / "figures.json"
    # One backbone keeps it short (each rung compiles three functions on a CPU); the other
    # trains in tests/model/test_backbones.py and takes the same code path here.
    result = run_check(
        tmp_path,
        assets,
        "--dry-run",
        "--backbones",
        "efficientnet_lite0",
        "--json",
        str(figures_file),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    assert set(figures["backbones"]) == {"efficientnet_lite0"}
    for name, row in figures["backbones"].items():
        assert row["images_per_second"]["32"] > 0, name
        rungs = [point["rung"] for point in row["curve"]]
        assert rungs == ["frozen-head", "full"], name  # both rungs, one epoch of one step
        assert all(0.0 <= p["test_accuracy"] <= 1.0 for p in row["curve"])
        assert set(row["seconds_to"]) == {"95%", "97%"}
    assert "| efficientnet_lite0 |" in result.stdout and "s to 97%" in result.stdout


@pytest.mark.parametrize("missing", ["data", "weights"])
def test_a_missing_asset_stops_it_at_once_with_the_fix(tmp_path, missing):
    assets = assets_from_shared(tmp_path / "assets")
    for item in (assets / missing).iterdir():
        item.unlink()
    result = run_check(tmp_path, assets, "--dry-run")
    assert result.returncode == 2
    assert "missing" in result.stderr and "bench/gpu_check.sh --prepare" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_a_gpu_it_refuses_a_real_run(tmp_path):
    if importlib.util.find_spec("jax") is None:
        missing_part("jax is not installed (infra/setup.sh installs it)")
    result = run_check(tmp_path, assets_from_shared(tmp_path / "assets"))
    assert result.returncode == 2
    assert "no GPU visible to JAX" in result.stderr and "--dry-run" in result.stderr


def test_the_carried_wheels_are_the_locked_versions():
    carried = re.search(r"carried=\(([^)]*)\)", SCRIPT.read_text()).group(1).split()
    locked = locked_versions()
    assert {"keras", "pydantic", "optree"} <= set(carried)
    for name in carried:
        assert len(locked.get(name, ())) == 1, name  # one version to download, whatever Python
