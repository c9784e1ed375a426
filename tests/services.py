"""The real service stack (PostgreSQL, Ceph RGW, MLflow server) for the tiers that need it:
its client environment, its credentials, starting and stopping it, and the pids behind it."""

from __future__ import annotations

import functools
import os
import secrets
import shlex
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "infra" / "services"
# What `all.sh start` needs in the environment (infra/services/env.sh); no defaults
# outside IMAGE_FINETUNE_SERVICES_DEV=1.
CREDENTIALS = (
    "POSTGRES_PASSWORD",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
)


def random_credentials() -> dict[str, str]:
    """Fresh credentials for each of CREDENTIALS missing from the environment."""
    fresh = {
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        "S3_ACCESS_KEY_ID": f"test-{secrets.token_hex(8)}",
        "S3_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.token_urlsafe(24),
    }
    return {key: value for key, value in fresh.items() if not os.environ.get(key)}


class ServicesEnv(dict):
    """The client environment; its repr (what pytest prints of a failing test's fixtures)
    masks the credentials."""

    SECRET = ("PASSWORD", "SECRET")

    def __repr__(self) -> str:
        return repr(
            {
                key: "***" if any(word in key for word in self.SECRET) else value
                for key, value in self.items()
            }
        )


def services_env(credentials: dict[str, str] | None = None) -> ServicesEnv:
    """The client environment that all.sh prints as export lines (credentials included);
    ``credentials`` are those the stack was started with, where not in os.environ."""
    result = subprocess.run(
        ["bash", str(SCRIPTS / "all.sh"), "env"],
        capture_output=True,
        text=True,
        env={**os.environ, **(credentials or {})},
    )
    if result.returncode != 0:
        raise RuntimeError(f"all.sh env failed: {result.stderr.strip()[-500:]}")
    env = ServicesEnv()
    for line in result.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            key, value = line.removeprefix("export ").split("=", 1)
            env[key] = "".join(shlex.split(value)) if value else ""
    return env


def run_services(action: str, *only: str, env: dict[str, str] | None = None) -> None:
    """``all.sh ACTION``, or ``<service>.sh ACTION`` for each service named; ``env`` adds to
    the environment (credentials the stack was started with)."""
    scripts = [SCRIPTS / f"{name}.sh" for name in only] or [SCRIPTS / "all.sh"]
    for script in scripts:
        subprocess.run(
            ["bash", str(script), action],
            check=True,
            timeout=600,
            env={**os.environ, **(env or {})},
        )


def services_up() -> bool:
    return (
        subprocess.run(["bash", str(SCRIPTS / "all.sh"), "status"], capture_output=True).returncode
        == 0
    )


@functools.cache
def _default_state_dir() -> str:
    return subprocess.run(
        [
            "bash",
            "-c",
            'source "$1"; printf %s "$SERVICES_STATE_DIR"',
            "-",
            str(SCRIPTS / "env.sh"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def state_dir() -> Path:
    """Where the stack keeps its state: SERVICES_STATE_DIR, else env.sh's default."""
    return Path(os.environ.get("SERVICES_STATE_DIR") or _default_state_dir())


PIDFILES = {  # relative to the state dir
    "mlflow_server": "mlflow/mlflow.pid",
    "postgres": "postgres/data/postmaster.pid",
    "radosgw": "ceph/run/client.rgw.local.pid",
}


def kill_hard(service: str) -> int:
    """SIGKILL a service's main process (and, for the MLflow server, its workers)."""
    pid = int((state_dir() / PIDFILES[service]).read_text().split()[0])
    if service == "mlflow_server":
        os.killpg(pid, signal.SIGKILL)  # started with setsid: its group is its workers
    else:
        os.kill(pid, signal.SIGKILL)
    return pid


def objects_under(services: dict[str, str], prefix: str) -> int:
    """How many objects the DVC bucket holds under ``prefix/`` (the stack's S3 server)."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=services["S3_ENDPOINT_URL"],
        aws_access_key_id=services["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=services["AWS_SECRET_ACCESS_KEY"],
        region_name=services["AWS_DEFAULT_REGION"],
    )
    listing = s3.list_objects_v2(Bucket=services["S3_DVC_BUCKET"], Prefix=f"{prefix}/")
    return listing.get("KeyCount", 0)
