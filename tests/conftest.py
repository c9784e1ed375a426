"""Shared fixtures: paths to the real data and weights in ../shared, and small real subsets."""

from __future__ import annotations

import io
import os
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IMAGE_FINETUNE_SHARED", ROOT.parent / "shared"))
CIFAR_TARBALL = SHARED / "data" / "cifar10-jpeg.tar.gz"
WEIGHTS_DIR = SHARED / "weights"
NO_TOP_WEIGHTS = WEIGHTS_DIR / "mobilenet_v2_1.0_imagenet_no_top.weights.h5"
FULL_WEIGHTS = WEIGHTS_DIR / "mobilenet_v2_1.0_imagenet.weights.h5"
LITE0_WEIGHTS = WEIGHTS_DIR / "efficientnet_lite0_imagenet_torch_layout.npz"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


# Rung 0 cannot learn at this learning rate; rung 1 can. So the loop must go round once.
FAIL_THEN_PASS_LADDER = [
    {"name": "hopeless-head", "epochs": 1, "learning_rate": 1.0e-7, "batch_size": 64},
    {"name": "top-blocks", "unfreeze_from": "block_13_expand", "epochs": 2,
     "learning_rate": 0.0005, "batch_size": 32},
]


# A gate the two-rung ladder's second rung passes on the small subset (and its first fails).
PASSABLE_GATE = {"min_accuracy": 0.3, "min_macro_f1": 0.2, "min_class_recall": 0.0,
                 "max_latency_p95_ms": 2000}


def small_run_params(folder: Path, weights: Path, gate: dict) -> dict:
    """The project's params.yaml for a small real subset: the two-rung ladder whose first
    rung fails, cheap evaluation, and the given gate."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(path=str(folder), validation_fraction=0.2,
                          min_validation_per_class=1)
    params["model"]["weights"] = str(weights)
    params["train"]["ladder"] = FAIL_THEN_PASS_LADDER
    params["evaluate"].update(bootstrap_samples=200, latency_runs=5, gallery_size=12)
    params["gate"].update(gate)
    return params


TIERS = ("unit", "data", "model", "distributed", "e2e", "integration", "faults", "containers",
         "install")


ORDER_SEED = "IMAGE_FINETUNE_TEST_ORDER_SEED"


def pytest_collection_modifyitems(items) -> None:
    """Mark each test with its tier (its folder), so ``-m unit`` etc. select tiers; with
    IMAGE_FINETUNE_TEST_ORDER_SEED set, run the test files in a shuffled order and the tests
    in each file too (except a file marked ``ordered``: one scenario told in steps)."""
    for item in items:
        tier = Path(item.fspath).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
    if os.environ.get(ORDER_SEED):
        items[:] = shuffled(items, random.Random(os.environ[ORDER_SEED]))


def shuffled(items: list, rng: random.Random) -> list:
    """``items`` with the files in a random order and each file's tests shuffled, files kept
    together (so their module fixtures are made once)."""
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    order = list(files.values())
    rng.shuffle(order)
    for tests in order:
        if not tests[0].get_closest_marker("ordered"):
            rng.shuffle(tests)
    return [item for tests in order for item in tests]


def pytest_report_header(config) -> str | None:
    seed = os.environ.get(ORDER_SEED)
    return f"shuffled order: {ORDER_SEED}={seed}" if seed else None


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


def wait_until(condition, timeout: float = 60, interval: float = 0.5,
               what: str = "the condition never held") -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(interval)


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


def _require(path: Path) -> Path:
    if not path.exists():
        missing_part(f"real data/weights not found at {path} (set IMAGE_FINETUNE_SHARED)")
    return path


@pytest.fixture(scope="session")
def cifar_tarball() -> Path:
    """The real CIFAR-10 JPEG tree as a .tar.gz."""
    return _require(CIFAR_TARBALL)


@pytest.fixture(scope="session")
def no_top_weights() -> Path:
    """Real ImageNet MobileNetV2 weights without the classifier top."""
    return _require(NO_TOP_WEIGHTS)


@pytest.fixture(scope="session")
def full_weights() -> Path:
    """Real ImageNet MobileNetV2 weights with the 1000-class top."""
    return _require(FULL_WEIGHTS)


@pytest.fixture(scope="session")
def lite0_weights() -> Path:
    """Real ImageNet EfficientNet-Lite0 tensors (PyTorch layout), with the 1000-class top."""
    return _require(LITE0_WEIGHTS)


def small_model_params(folder: Path, weights: Path) -> dict:
    """A cheap profile: 32 px, the frozen backbone's head for three epochs, a gate anyone
    passes (the tests that use it are about what happens around the model)."""
    return {
        "data": {"path": str(folder), "validation_fraction": 0.2,
                 "min_validation_per_class": 1},
        "model": {"weights": str(weights), "image_size": 32},
        "train": {"cache_boundary": None, "ladder": [
            {"name": "head", "epochs": 3, "batch_size": 32, "learning_rate": 0.003}]},
        "evaluate": {"bootstrap_samples": 200, "latency_runs": 3, "gallery_size": 6},
        "gate": {"min_accuracy": 0.0, "min_macro_f1": 0.0, "min_class_recall": 0.0,
                 "max_latency_p95_ms": 10000},
    }


@pytest.fixture(scope="session")
def small_model(small_folder, no_top_weights, tmp_path_factory) -> dict:
    """One small classifier trained on real images for the whole session: the registry and
    faults tiers register it under names of their own instead of each training one.
    Read-only for its users: ``params`` (no registry section), ``data``, ``model``."""
    from image_finetune.config import Params
    from image_finetune.steps.train_rung import train_rung

    work = tmp_path_factory.mktemp("small-model")
    params = Params.model_validate(small_model_params(small_folder, no_top_weights))
    ingest_source(params.data, small_folder, work / "data")
    result = train_rung(params, 0, work / "data", work / "attempt", work / "cache", ROOT)
    return {"params": params, "data": work / "data", "model": Path(result.model_path)}


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


@pytest.fixture(scope="session")
def small_folder(cifar_tarball: Path, tmp_path_factory) -> Path:
    """A real CIFAR-10 subset: 30 train and 10 test images per class, as a folder tree."""
    return extract_subset(cifar_tarball, tmp_path_factory.mktemp("cifar-small"),
                          {"train": 30, "test": 10})


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


@pytest.fixture(scope="session")
def service_stack():
    """The running stack's client environment; started here (and stopped after) unless it
    was already up. A stack started here gets random credentials for whatever credential
    the environment does not set (never the development defaults). The test process's own
    environment is not touched: ``services`` sets it, one module at a time."""
    import shutil

    from tests.services import random_credentials, run_services, services_env, services_up

    if shutil.which("radosgw") is None or not list(Path("/usr/lib/postgresql").glob("*/bin")):
        missing_part("service packages missing: run `bash infra/services/install.sh`")
    already_up = services_up()
    generated = {} if already_up else random_credentials()
    if not already_up:
        run_services("start", env=generated)
    try:
        env = services_env(generated)
    except RuntimeError as exc:
        pytest.fail(f"the services are running but the credentials they were started with "
                    f"are not in the environment (export them): {exc}")
    env.update(generated)  # what a test needs to restart a service
    yield env
    if not already_up:
        run_services("stop", env=generated)


@pytest.fixture(scope="module")
def services(service_stack):
    """The stack's client environment (MLFLOW_TRACKING_URI, credentials, S3 endpoint), set in
    ``os.environ`` for the module that asks for it and restored after it."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in service_stack.items():
            patch.setenv(key, value)
        yield service_stack
