"""Run kfp.local's tasks in the project's image (``run-local --runner docker``).

kfp.local's DockerRunner mounts only the pipeline root. A task here also reads the data and
the weights (mounted read-only) and writes the training cache and the MLflow store (mounted
read-write), each at its host path, so the compiled arguments mean the same inside and out.

Tasks never run as root: as the image's user (``USER`` in infra/docker/Dockerfile.cpu, group
0) when this process is root, else as this process's user, so outputs stay the caller's.
Group 0 gets write access to the writable mounts for the image's user.

kfp 2.17 removes a task's container automatically and, when it is gone before its exit code
is read, reports success (``run_docker_container``). :func:`containers_that_report` replaces
that function while the context is open: the container is removed only after its exit code
was read, and each one is recorded.
"""

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from image_finetune.config import NAMED_WEIGHTS, Params, resolve_path
from image_finetune.errors import ConfigError

# What a task may need from this process's environment: MLflow's and S3's settings and
# credentials. Nothing else leaks in (host paths such as a CA bundle mean nothing inside).
FORWARDED_PREFIXES = ("MLFLOW_", "AWS_")
BUILD_HINT = "build it with `bash infra/docker/build.sh` (or docker pull it)"


@dataclass(frozen=True)
class ContainerRecord:
    """One task's container: what it ran as and how it ended."""

    task: str
    image: str
    user: str
    exit_code: int
    seconds: float


@dataclass(frozen=True)
class Mount:
    """A host path a task needs, at the same path inside the container."""

    path: Path
    writable: bool


def tracking_folder(tracking_uri: str) -> Path | None:
    """The folder a local MLflow store lives in (sqlite file or file store); None for a
    server. sqlite writes its journal beside the database, so the folder is mounted."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).parent
    if "://" not in tracking_uri or tracking_uri.startswith("file:"):
        return Path(tracking_uri.removeprefix("file://")).parent
    return None


def absolute_paths(params: Params, project_root: Path) -> Params:
    """``params`` with its data, weights and local tracking store as absolute paths: tasks
    in a container do not start in the project folder."""
    data = resolve_path(params.data.path, project_root)
    updates: dict[str, BaseModel] = {"data": params.data.model_copy(update={"path": str(data)})}
    if params.model.weights not in NAMED_WEIGHTS:
        weights = resolve_path(params.model.weights, project_root)
        updates["model"] = params.model.model_copy(update={"weights": str(weights)})
    uri = params.registry.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        db = resolve_path(uri.removeprefix("sqlite:///"), project_root)
        updates["registry"] = params.registry.model_copy(update={"tracking_uri": f"sqlite:///{db}"})
    return params.model_copy(update=updates)


def mounts_for(params: Params, cache_dir: Path) -> list[Mount]:
    """What the tasks read (read-only) and write (read-write), beside the pipeline root."""
    mounts = [Mount(Path(params.data.path), writable=False), Mount(cache_dir, writable=True)]
    if params.model.weights not in NAMED_WEIGHTS:
        mounts.append(Mount(Path(params.model.weights), writable=False))
    folder = tracking_folder(params.registry.tracking_uri)
    if folder is not None:
        mounts.append(Mount(folder, writable=True))
    return mounts


def container_user(image_user: str) -> str:
    """``uid:gid`` the tasks run as: this process's, or the image's when this one is root."""
    if os.getuid() != 0:
        return f"{os.getuid()}:{os.getgid()}"
    uid = image_user.partition(":")[0]
    if uid in ("", "0", "root"):
        raise ConfigError(
            f"the image runs as root (USER {image_user or 'unset'}); its "
            "Dockerfile must name a non-root user"
        )
    return f"{uid}:0"


def permits(path: Path, uid: int, gid: int, owner_bits: int) -> bool:
    """Whether ``uid:gid`` has ``owner_bits`` (e.g. ``stat.S_IXUSR``) on ``path``, by its
    owner, group or other permission bits."""
    info = path.stat()
    shift = 0 if info.st_uid == uid else 3 if info.st_gid == gid else 6
    return bool(info.st_mode & (owner_bits >> shift))


def blocked_ancestor(path: Path, uid: int, gid: int) -> Path | None:
    """The first folder above ``path`` that ``uid:gid`` cannot enter, if any."""
    for folder in reversed(path.parents):
        if not permits(folder, uid, gid, stat.S_IXUSR):
            return folder
    return None


def readable(path: Path, uid: int, gid: int) -> bool:
    """A file ``uid:gid`` can read, or a folder it can list and enter."""
    needed = (stat.S_IRUSR, stat.S_IXUSR) if path.is_dir() else (stat.S_IRUSR,)
    return all(permits(path, uid, gid, bit) for bit in needed)


def prepare_mounts(mounts: list[Mount], user: str) -> None:
    """Create the writable folders, open them to group 0 when tasks run as the image's user,
    and refuse paths the tasks could not reach, naming the folder that blocks them."""
    uid, gid = (int(part) for part in user.split(":"))
    for mount in mounts:
        if not mount.writable and not mount.path.exists():
            raise ConfigError(f"{mount.path}: not found (tasks read it)")
        if mount.writable:
            mount.path.mkdir(parents=True, exist_ok=True)
        blocked = blocked_ancestor(mount.path, uid, gid)
        if blocked is not None:
            raise ConfigError(
                f"{mount.path}: the tasks' user ({user}) cannot enter {blocked} "
                f"(mode {stat.filemode(blocked.stat().st_mode)}); put the run's paths "
                f"elsewhere or `chmod o+x {blocked}`"
            )
        if not mount.writable and not readable(mount.path, uid, gid):
            raise ConfigError(
                f"{mount.path}: the tasks' user ({user}) cannot read it (mode "
                f"{stat.filemode(mount.path.stat().st_mode)}); `chmod -R o+rX {mount.path}`"
            )
        if mount.writable and os.getuid() == 0:
            _open_to_group(mount.path)


def _open_to_group(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        extra = stat.S_IRGRP | stat.S_IWGRP | (stat.S_IXGRP if stat.S_ISDIR(mode) else 0)
        if mode & extra != extra:
            path.chmod(stat.S_IMODE(mode) | extra)


def runner_arguments(mounts: list[Mount], user: str, working_dir: Path) -> dict:
    """``kfp.local.DockerRunner``'s container arguments for these mounts and this user.
    ``working_dir``: a mounted folder, where MLflow puts a new experiment's artifacts."""
    from docker.types import Mount as DockerMount

    return {
        "user": user,
        "working_dir": str(working_dir),
        "network_mode": "host",  # the services on 127.0.0.1 (MLflow, S3)
        "mounts": [
            DockerMount(str(m.path), str(m.path), type="bind", read_only=not m.writable)
            for m in mounts
        ],
    }


def image_user(image: str) -> str:
    """The image's configured user; a clear error when the image is not here."""
    import docker

    try:
        client = docker.from_env()
    except docker.errors.DockerException as exc:
        raise ConfigError(f"Docker is not reachable ({exc}); start dockerd") from None
    with contextlib.closing(client):
        try:
            return client.images.get(image).attrs["Config"].get("User") or ""
        except docker.errors.ImageNotFound:
            raise ConfigError(f"image {image} not found; {BUILD_HINT}") from None


def forwarded_environment() -> dict[str, str]:
    return {
        name: value for name, value in os.environ.items() if name.startswith(FORWARDED_PREFIXES)
    }


def task_name(command: list[str]) -> str:
    """The task a kfp.local container runs: its output file's folder, in the executor input."""
    import json

    for argument, value in zip(command, command[1:], strict=False):
        if argument == "--executor_input":
            return Path(json.loads(value)["outputs"]["outputFile"]).parent.name
    return "?"


def _run_and_record(records: list[ContainerRecord], environment: dict[str, str]):
    def run_container(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
        run_args.pop("auto_remove", None)
        run_args["environment"] = {**environment, **run_args.get("environment", {})}
        start = time.perf_counter()
        container = client.containers.run(
            image=image, command=command, detach=True, volumes=volumes, **run_args
        )
        try:
            for line in container.logs(stream=True, follow=True):
                print(line.decode(errors="replace"), end="")
            exit_code = int(container.wait()["StatusCode"])
        finally:
            container.remove(force=True)
        records.append(
            ContainerRecord(
                task_name(command),
                image,
                container.attrs["Config"].get("User", ""),
                exit_code,
                time.perf_counter() - start,
            )
        )
        return exit_code

    return run_container


@contextlib.contextmanager
def containers_that_report(records: list[ContainerRecord]) -> Iterator[None]:
    """Run kfp.local's Docker tasks with their real exit codes, recording each container,
    with the forwarded environment, and with new folders writable by group 0."""
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = _run_and_record(records, forwarded_environment())
    umask = os.umask(0o002)  # kfp.local makes each task's output folders on this side
    try:
        yield
    finally:
        os.umask(umask)
        docker_task_handler.run_docker_container = original
