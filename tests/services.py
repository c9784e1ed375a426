"""The real service stack (PostgreSQL, Ceph RGW, MLflow server) for the tiers that need it:
its client environment, starting and stopping it, and the pids behind it."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "infra" / "services"


def services_env() -> dict[str, str]:
    """The client environment that all.sh prints as export lines."""
    lines = subprocess.run(["bash", str(SCRIPTS / "all.sh"), "env"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    pairs = (line.removeprefix("export ").split("=", 1) for line in lines if "=" in line)
    return {key: value.strip("'\"") for key, value in pairs}


def run_services(action: str, *only: str) -> None:
    """``all.sh ACTION``, or ``<service>.sh ACTION`` for each service named."""
    scripts = [SCRIPTS / f"{name}.sh" for name in only] or [SCRIPTS / "all.sh"]
    for script in scripts:
        subprocess.run(["bash", str(script), action], check=True, timeout=600)


def services_up() -> bool:
    return subprocess.run(["bash", str(SCRIPTS / "all.sh"), "status"],
                          capture_output=True).returncode == 0


def state_dir() -> Path:
    return Path(os.environ.get("SERVICES_STATE_DIR", "/tmp/image-finetune-services"))


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
