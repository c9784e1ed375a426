"""The real services (PostgreSQL, Ceph RGW, MLflow server), started by infra/services/all.sh
unless already up, and small real candidates to register."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "infra" / "services" / "all.sh"


def services_env() -> dict[str, str]:
    """The client environment that all.sh prints as export lines."""
    lines = subprocess.run(["bash", str(SERVICES), "env"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    pairs = (line.removeprefix("export ").split("=", 1) for line in lines if "=" in line)
    return {key: value.strip("'\"") for key, value in pairs}


def run_services(action: str, *only: str) -> None:
    scripts = [ROOT / "infra" / "services" / f"{name}.sh" for name in only] or [SERVICES]
    for script in scripts:
        subprocess.run(["bash", str(script), action], check=True, timeout=600)


@pytest.fixture(scope="session")
def services():
    """The running stack; started here (and stopped after) unless it was already up."""
    if shutil.which("radosgw") is None or not list(Path("/usr/lib/postgresql").glob("*/bin")):
        message = "service packages missing: run `bash infra/services/install.sh`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    already_up = subprocess.run(["bash", str(SERVICES), "status"], capture_output=True)
    if already_up.returncode != 0:
        run_services("start")
    env = services_env()
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if already_up.returncode != 0:
        run_services("stop")
