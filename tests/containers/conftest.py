"""The containers tier: the project's CPU image (infra/docker/build.sh; .ci/run builds it)
running the pipeline's tasks under kfp.local's DockerRunner, and the inference server as the
Kubernetes Deployment runs it.

pytest's temporary folders sit under a root-only folder, which the image's non-root user
cannot enter: this tier's runs live in a folder of their own that it can."""

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from image_finetune.config import Params
from image_finetune.pipelines.deployment import Deployment
from image_finetune.pipelines.local import LocalRun, run_local
from tests.support import PASSABLE_GATE, ROOT, container_params, missing_part


@dataclass(frozen=True)
class ContainerPipelineRun:
    """A pipeline run in containers, the params it ran with and its workspace."""

    local: LocalRun
    params: Params
    workspace: Path


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        missing_part(f"Docker is not reachable ({exc}); start dockerd")
    yield client
    client.close()


@pytest.fixture(scope="session")
def cpu_image(docker_client) -> str:
    """The image setting's CPU tag, as build.sh tags it and the pipeline names it."""
    import docker

    tag = Deployment().cpu_image
    try:
        docker_client.images.get(tag)
    except docker.errors.ImageNotFound:
        missing_part(f"image {tag} not built (bash infra/docker/build.sh)")
    return tag


@pytest.fixture(scope="session")
def open_workspace() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="image-finetune-containers-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def container_run(cpu_image, open_workspace, small_folder, no_top_weights) -> ContainerPipelineRun:
    """The two-rung pipeline on the small real subset, every task in the image: rung 0
    fails its gate, rung 1 passes, the winner is registered and promoted."""
    data = shutil.copytree(small_folder, open_workspace / "data")
    data.chmod(0o755)  # copied from pytest's root-only folder
    params = container_params(open_workspace, data, no_top_weights, PASSABLE_GATE)
    run = run_local(params, ROOT, open_workspace / "run", open_workspace / "cache", runner="docker")
    seconds = [c.seconds for c in run.containers] or [0.0]
    print(
        f"kfp.local run in containers: {run.seconds:.0f} s, {len(run.containers)} "
        f"containers, {sum(seconds) / len(seconds):.1f} s each on average"
    )
    return ContainerPipelineRun(run, params, open_workspace)
