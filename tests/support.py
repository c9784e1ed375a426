"""What the tests share besides fixtures (tests/conftest.py keeps those and the hooks):
the project's and the real data's places, one factory of small-run params, the steps a test
runs as its setup, waiting, ports, and a loud skip for a missing real part."""

from __future__ import annotations

import io
import os
import socket
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from image_finetune.config import Params

ROOT = Path(__file__).resolve().parents[1]
# The real data and weights (see shared/README.md): ../shared beside the checkout, or where
# IMAGE_FINETUNE_SHARED says.
SHARED = Path(os.environ.get("IMAGE_FINETUNE_SHARED", ROOT.parent / "shared"))
CIFAR_TARBALL = SHARED / "data" / "cifar10-jpeg.tar.gz"
WEIGHTS_DIR = SHARED / "weights"
NO_TOP_WEIGHTS = WEIGHTS_DIR / "mobilenet_v2_1.0_imagenet_no_top.weights.h5"
FULL_WEIGHTS = WEIGHTS_DIR / "mobilenet_v2_1.0_imagenet.weights.h5"
LITE0_WEIGHTS = WEIGHTS_DIR / "efficientnet_lite0_imagenet_torch_layout.npz"

# How the small real subsets are split: a fifth of train held out, every class in it.
SMALL_SPLIT = {"validation_fraction": 0.2, "min_validation_per_class": 1}

# Rung 0 cannot learn at this learning rate; rung 1 can. So the loop must go round once.
FAIL_THEN_PASS_LADDER = [
    {"name": "hopeless-head", "epochs": 1, "learning_rate": 1.0e-7, "batch_size": 64},
    {
        "name": "top-blocks",
        "unfreeze_from": "block_13_expand",
        "epochs": 2,
        "learning_rate": 0.0005,
        "batch_size": 32,
    },
]


# A gate the two-rung ladder's second rung passes on the small subset (and its first fails).
PASSABLE_GATE = {
    "min_accuracy": 0.3,
    "min_macro_f1": 0.2,
    "min_class_recall": 0.0,
    "max_latency_p95_ms": 2000,
}


def small_params(
    folder: Path,
    weights: Path | str,
    ladder: list[dict],
    *,
    from_project: bool = False,
    **sections: dict,
) -> dict:
    """Raw params (a params.yaml's tree) for a run on the small real subset in ``folder``:
    its split (SMALL_SPLIT), the backbone ``weights``, the ``ladder``, then each of
    ``sections`` (``model={"image_size": 64}``, ``gate={...}``) updating its section.
    ``from_project``: on top of the project's params.yaml, else of the typed defaults."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text()) if from_project else {}
    base = {
        "data": {"path": str(folder), **SMALL_SPLIT},
        "model": {"weights": str(weights)},
        "train": {"ladder": ladder},
    }
    for name, values in [*base.items(), *sections.items()]:
        params.setdefault(name, {}).update(values)
    return params


def small_run_params(folder: Path, weights: Path, gate: dict) -> dict:
    """The project's params.yaml for a small real subset: the two-rung ladder whose first
    rung fails, cheap evaluation, and the given gate."""
    return small_params(
        folder,
        weights,
        FAIL_THEN_PASS_LADDER,
        from_project=True,
        evaluate={"bootstrap_samples": 200, "latency_runs": 5, "gallery_size": 12},
        gate=gate,
    )


def container_params(workspace: Path, data: Path, weights: Path, gate: dict) -> Params:
    """small_run_params with the MLflow store in ``workspace`` (mounted into the containers)."""
    from image_finetune.config import Params

    raw = small_run_params(data, weights, gate)
    raw["registry"]["tracking_uri"] = f"sqlite:///{workspace / 'tracking' / 'mlflow.db'}"
    return Params.model_validate(raw)


def small_model_params(folder: Path, weights: Path) -> dict:
    """A cheap profile: 32 px, the frozen backbone's head for three epochs, a gate anyone
    passes (the tests that use it are about what happens around the model)."""
    return small_params(
        folder,
        weights,
        [{"name": "head", "epochs": 3, "batch_size": 32, "learning_rate": 0.003}],
        model={"image_size": 32},
        train={"cache_boundary": None},
        evaluate={"bootstrap_samples": 200, "latency_runs": 3, "gallery_size": 6},
        gate={
            "min_accuracy": 0.0,
            "min_macro_f1": 0.0,
            "min_class_recall": 0.0,
            "max_latency_p95_ms": 10000,
        },
    )


def read_lock() -> dict:
    """uv.lock, parsed."""
    import tomllib

    return tomllib.loads((ROOT / "uv.lock").read_text())


def locked_versions() -> dict[str, set[str]]:
    """Every package uv.lock pins, with its version(s) (one per Python where they differ)."""
    versions: dict[str, set[str]] = {}
    for package in read_lock()["package"]:
        versions.setdefault(package["name"], set()).add(package.get("version"))
    return versions


def wait_until(
    condition, timeout: float = 60, interval: float = 0.5, what: str = "the condition never held"
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(interval)


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ingest_source(data, source: Path, out: Path) -> dict:
    """The ingest step on ``source`` with the data params ``data`` (a DataParams)."""
    from image_finetune.config import Params
    from image_finetune.steps.ingest import ingest_data

    return ingest_data(Params(data=data.model_copy(update={"path": str(source)})), out, ROOT)


def validate_with(data_dir: Path, params, out: Path):
    """The validate step on a canonical dataset with the validate params ``params``."""
    from image_finetune.config import Params
    from image_finetune.steps.validate import validate_data

    return validate_data(Params(validate=params), data_dir, out)


REQUIRE_ENV = "IMAGE_FINETUNE_REQUIRE_REAL_PARTS"


def missing_part(message: str) -> None:
    """A real part (data, weights, services, a backend) is missing: a loud skip for a
    developer, a failure where every part is required (.ci/run sets IMAGE_FINETUNE_REQUIRE_
    REAL_PARTS=1, so a missing part can never pass CI by skipping)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"required real part missing: {message}")
    pytest.skip(message)


def extract_subset(tarball: Path, out: Path, per_class: dict[str, int]) -> Path:
    """Extract the first N real images per class of each split into a folder tree."""
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(tarball) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or parts[0] not in per_class:
                continue
            key = (parts[0], parts[1])
            if taken.get(key, 0) >= per_class[parts[0]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            target = out / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
    return out


def copy_tree(source: Path, target: Path) -> Path:
    """A writable copy of a folder tree (for breaking it)."""
    import shutil

    shutil.copytree(source, target)
    return target


def jpeg_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 image as JPEG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
