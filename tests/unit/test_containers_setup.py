"""The images' recipe and the Docker runner's setup, checked without Docker: the image lock
is uv.lock's pins minus what the runtime does not need; the build context holds
what the Dockerfiles copy; tasks get the paths they need, read-only where they only read,
and a clear refusal for paths the image's user cannot reach."""

import re
import shutil
import tempfile
from pathlib import Path

import pytest

from image_finetune.config import Params
from image_finetune.errors import ConfigError
from image_finetune.pipelines.containers import (
    Mount,
    absolute_paths,
    blocked_ancestor,
    container_user,
    mounts_for,
    prepare_mounts,
    tracking_folder,
)
from tests.support import ROOT, locked_versions

DOCKER = ROOT / "infra" / "docker"
DOCKERFILES = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.gpu", DOCKER / "Dockerfile.serve"]


@pytest.fixture
def open_tmp() -> Path:
    """A temporary folder anyone may enter (pytest's own sit under a root-only folder)."""
    folder = Path(tempfile.mkdtemp(prefix="containers-unit-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def pins(lock: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", lock.read_text(), re.M))


def test_the_image_lock_is_the_main_locks_runtime_subset():
    image, main = pins(DOCKER / "requirements.image.lock"), locked_versions()
    assert all(version in main.get(name, ()) for name, version in image.items())
    assert "--hash=sha256:" in (DOCKER / "requirements.image.lock").read_text()
    for left_out in (
        "pytest",
        "ruff",
        "jax",
        "jaxlib",
        "dvc",
        "kubernetes-validate",
        "libclang",
        "pyarrow",
    ):
        assert left_out not in image and left_out in main
    for needed in (
        "tensorflow-cpu",
        "keras",
        "mlflow",
        "kfp",
        "great-expectations",
        "fastapi",
        "uvicorn",
        "docker",
        # the export-engine step's converters, quantizer and engines
        "tf2onnx",
        "onnx",
        "nncf",
        "onnxruntime",
        "openvino",
    ):
        assert needed in image


def test_the_build_context_holds_exactly_what_the_dockerfiles_copy():
    rules = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert rules[0] == "*"  # everything else is left out (.git, data, caches, venv)
    allowed = {rule.removeprefix("!").rstrip("/") for rule in rules if rule.startswith("!")}
    copied = set()
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert not re.search(r"^# *syntax=", text, re.M)  # would pull a frontend image
        assert re.search(r"^ARG BASE_IMAGE=", text, re.M)
        assert re.search(r"^USER \$\{USER_ID\}:0$", text, re.M)
        # from the build context (COPY --from=<stage> copies from an earlier stage)
        copied |= {
            source
            for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M)
            for source in sources.split()
        }
    assert copied == allowed


def test_the_serving_image_lock_is_the_serve_extra_without_tensorflow():
    serve, main = pins(DOCKER / "requirements.serve.lock"), locked_versions()
    assert all(version in main.get(name, ()) for name, version in serve.items())
    assert "--hash=sha256:" in (DOCKER / "requirements.serve.lock").read_text()
    for left_out in (
        "tensorflow-cpu",
        "keras",
        "great-expectations",
        "mlflow",
        "onnx",
        "nncf",
        "pandas",
        "cryptography",
        "gitpython",
        "pytest",
    ):
        assert left_out not in serve
    for needed in (
        "openvino",
        "mlflow-skinny",
        "fastapi",
        "uvicorn",
        "uvloop",
        "httptools",
        "scipy",
        "pillow",
        "numpy",
        "prometheus-client",
        "python-multipart",
    ):
        assert needed in serve


def test_tracking_folders_of_local_stores_and_none_for_servers():
    assert tracking_folder("sqlite:////data/mlflow.db") == Path("/data")
    assert tracking_folder("file:///data/mlruns") == Path("/data")
    assert tracking_folder("https://mlflow.example.com") is None


def test_relative_paths_become_the_project_folders(tmp_path):
    params = absolute_paths(Params(), tmp_path)
    assert params.data.path == str((tmp_path / "../shared/data/cifar10-jpeg.tar.gz").resolve())
    assert Path(params.model.weights).is_absolute()
    assert params.registry.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_inputs_are_mounted_read_only_and_outputs_read_write(tmp_path):
    params = absolute_paths(Params(), tmp_path)
    mounts = {m.path: m.writable for m in mounts_for(params, tmp_path / "cache")}
    assert mounts == {
        Path(params.data.path): False,
        Path(params.model.weights): False,
        tmp_path / "cache": True,
        tmp_path: True,
    }
    no_weights = params.model_copy(
        update={"model": params.model.model_copy(update={"weights": "imagenet"})}
    )
    assert Path(params.model.weights) not in {m.path for m in mounts_for(no_weights, tmp_path)}


def test_a_root_only_folder_blocks_the_images_user(open_tmp):
    private = open_tmp / "private"
    (private / "run").mkdir(parents=True)
    private.chmod(0o700)
    assert blocked_ancestor(private / "run" / "x", 1000, 0) == private
    private.chmod(0o755)
    assert blocked_ancestor(private / "run" / "x", 1000, 0) is None
    private.chmod(0o750)  # group 0 may enter a root-group folder
    assert blocked_ancestor(private / "run" / "x", 1000, private.stat().st_gid) is None


def test_unreachable_and_missing_paths_are_refused_with_the_folder_named(open_tmp):
    private = open_tmp / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match=rf"cannot enter {private} \(mode drwx------\)"):
        prepare_mounts([Mount(private / "cache", writable=True)], "1000:0")
    unreadable = open_tmp / "data"
    unreadable.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match=rf"{unreadable}: .* cannot read it"):
        prepare_mounts([Mount(unreadable, writable=False)], "1000:0")
    with pytest.raises(ConfigError, match="not found"):
        prepare_mounts([Mount(open_tmp / "absent", writable=False)], "1000:0")


@pytest.mark.skipif(__import__("os").getuid() != 0, reason="root hands folders to group 0")
def test_writable_folders_are_opened_to_group_zero(open_tmp):
    cache = open_tmp / "cache"
    (cache / "attempts").mkdir(parents=True, mode=0o700)
    (cache / "attempts" / "done.json").write_text("{}")
    (cache / "attempts" / "done.json").chmod(0o600)
    prepare_mounts([Mount(cache, writable=True)], "1000:0")
    assert (cache / "attempts").stat().st_mode & 0o070 == 0o070
    assert (cache / "attempts" / "done.json").stat().st_mode & 0o060 == 0o060


def test_tasks_never_run_as_root(monkeypatch):
    monkeypatch.setattr("os.getuid", lambda: 0)
    assert container_user("1000:0") == "1000:0"
    assert container_user("1000") == "1000:0"
    for root in ("", "root", "0:0"):
        with pytest.raises(ConfigError, match="runs as root"):
            container_user(root)
    monkeypatch.setattr("os.getuid", lambda: 1234)
    monkeypatch.setattr("os.getgid", lambda: 99)
    assert container_user("1000:0") == "1234:99"
