"""Shared fixtures (the real data and weights in ../shared, small real subsets, the services)
and the hooks that mark and order the tiers. Helpers live in tests/support.py: a test module
imports from there, never from here."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.support import (
    CIFAR_TARBALL,
    FULL_WEIGHTS,
    LITE0_WEIGHTS,
    NO_TOP_WEIGHTS,
    ROOT,
    extract_subset,
    ingest_source,
    missing_part,
    small_model_params,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


TIERS = (
    "unit",
    "data",
    "model",
    "distributed",
    "e2e",
    "integration",
    "faults",
    "containers",
    "install",
)


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


@pytest.fixture(scope="session")
def small_folder(cifar_tarball: Path, tmp_path_factory) -> Path:
    """A real CIFAR-10 subset: 30 train and 10 test images per class, as a folder tree."""
    return extract_subset(
        cifar_tarball, tmp_path_factory.mktemp("cifar-small"), {"train": 30, "test": 10}
    )


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
        pytest.fail(
            f"the services are running but the credentials they were started with "
            f"are not in the environment (export them): {exc}"
        )
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
