"""Authentication of the real services: the MLflow server (basic auth) refuses anonymous
and wrong-password clients, so nobody without the credentials can move ``@champion``;
Ceph (cephx) refuses a client without the admin keyring; credentials stay out of logs and
process lists, and out of what our command line prints when the server refuses them."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from tests.services import ROOT, state_dir

VENV_BIN = ROOT / ".venv" / "bin"
SEARCH = "/api/2.0/mlflow/experiments/search"
WRONG_PASSWORD = "not-the-password-0123"


def call(services, auth=None) -> int:
    """HTTP status of an API call that needs a user."""
    return requests.get(
        f"{services['MLFLOW_TRACKING_URI']}{SEARCH}",
        params={"max_results": 1},
        auth=auth,
        timeout=10,
    ).status_code


def admin(services) -> tuple[str, str]:
    return services["MLFLOW_TRACKING_USERNAME"], services["MLFLOW_TRACKING_PASSWORD"]


def test_mlflow_api_needs_the_right_credentials(services):
    # (statuses first: an assertion on the call itself would print the password)
    user, password = admin(services)
    anonymous, wrong_password = call(services), call(services, (user, WRONG_PASSWORD))
    unknown_user, right = call(services, ("nobody", password)), call(services, (user, password))
    assert (anonymous, wrong_password, unknown_user, right) == (401, 401, 401, 200)
    # MLflow keeps /health open (for probes): it tells nothing about credentials.
    health = requests.get(f"{services['MLFLOW_TRACKING_URI']}/health", timeout=10)
    assert health.status_code == 200


@pytest.fixture
def champion(services):
    """A registered model with two versions, ``@champion`` on version 1 (as the admin)."""
    from mlflow import MlflowClient

    client = MlflowClient(services["MLFLOW_TRACKING_URI"])
    name = f"auth-{uuid.uuid4().hex[:8]}"
    experiment = client.create_experiment(name)
    run = client.create_run(experiment)
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias(name, "champion", "1")
    yield client, name
    client.delete_registered_model(name)
    client.delete_experiment(experiment)


@pytest.mark.parametrize("who", ["anonymous", "wrong password"])
def test_the_champion_cannot_be_moved_without_the_credentials(services, champion, who, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    admin_client, name = champion
    if who == "anonymous":
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", WRONG_PASSWORD)
    intruder = MlflowClient(services["MLFLOW_TRACKING_URI"])
    for attempt in (
        lambda: intruder.set_registered_model_alias(name, "champion", "2"),
        lambda: intruder.delete_registered_model_alias(name, "champion"),
        lambda: intruder.get_model_version_by_alias(name, "champion"),
    ):
        with pytest.raises(MlflowException) as refused:
            attempt()
        assert "401" in str(refused.value) or refused.value.error_code == "UNAUTHENTICATED"
    monkeypatch.undo()
    assert admin_client.get_model_version_by_alias(name, "champion").version == "1"


def test_a_user_without_a_grant_cannot_move_the_champion(services, champion, monkeypatch):
    """default_permission is NO_PERMISSIONS: a valid user who was granted nothing is
    refused (403), so only the configured users can write."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    admin_client, name = champion
    users = f"{services['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/users"
    username, password = f"nogrant-{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4().hex}"
    created = requests.post(
        f"{users}/create",
        json={"username": username, "password": password},
        auth=admin(services),
        timeout=10,
    )
    assert created.status_code == 200, created.text
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", username)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        with pytest.raises(MlflowException) as refused:
            MlflowClient(services["MLFLOW_TRACKING_URI"]).set_registered_model_alias(
                name, "champion", "2"
            )
        assert refused.value.error_code == "PERMISSION_DENIED"
        monkeypatch.undo()
        assert admin_client.get_model_version_by_alias(name, "champion").version == "1"
    finally:
        monkeypatch.undo()
        requests.delete(
            f"{users}/delete", json={"username": username}, auth=admin(services), timeout=10
        ).raise_for_status()


@pytest.mark.parametrize("password", [None, WRONG_PASSWORD], ids=["no password", "wrong"])
def test_the_cli_says_the_server_refused_the_credentials(services, password, tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["registry"].update(
        tracking_uri=services["MLFLOW_TRACKING_URI"], model_name=f"auth-{uuid.uuid4().hex[:8]}"
    )
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_PASSWORD"}
    if password:
        env["MLFLOW_TRACKING_PASSWORD"] = password
    result = subprocess.run(
        [str(VENV_BIN / "image-finetune"), "models", "-p", str(params_file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 7, output[-2000:]
    assert "refused the credentials" in output
    leaked = services["MLFLOW_TRACKING_PASSWORD"] in output or WRONG_PASSWORD in output
    assert not leaked, "a password is in the output"
    assert "Traceback" not in output


def ceph(*args: str, keyring: Path | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "CEPH_ARGS"}
    if keyring:
        env["CEPH_ARGS"] = f"-n client.admin --keyring {keyring}"
    return subprocess.run(
        ["ceph", "-c", str(state_dir() / "ceph" / "ceph.conf"), "--connect-timeout", "10", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ceph_refuses_a_client_without_the_admin_keyring(services, tmp_path):
    keyrings = state_dir() / "ceph" / "keyring"
    assert stat.S_IMODE(keyrings.stat().st_mode) == 0o700
    names = sorted(path.name for path in keyrings.glob("*.keyring"))
    assert names == [
        "client.admin.keyring",
        "client.rgw.local.keyring",
        "mon.keyring",
        "osd.0.keyring",
    ]
    for path in keyrings.glob("*.keyring"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    assert ceph("-s").returncode != 0  # no keyring at all
    forged = tmp_path / "forged.keyring"
    subprocess.run(
        ["ceph-authtool", "--create-keyring", str(forged), "--gen-key", "-n", "client.admin"],
        check=True,
        capture_output=True,
    )
    assert ceph("-s", keyring=forged).returncode != 0  # the right name, another key
    status = ceph("-s", keyring=keyrings / "client.admin.keyring")
    assert status.returncode == 0, status.stderr
    assert "osd: 1 osds: 1 up" in status.stdout


def test_the_state_dir_is_private(services):
    mode = stat.S_IMODE(state_dir().stat().st_mode)
    # 0710 when root runs the stack: PostgreSQL's own OS user must pass through
    assert mode in (0o700, 0o710), oct(mode)
    for sub in ("ceph", "mlflow", "postgres"):
        assert stat.S_IMODE((state_dir() / sub).stat().st_mode) == 0o700, sub
    for name in ("basic_auth.ini", "flask_secret_key"):
        assert stat.S_IMODE((state_dir() / "mlflow" / name).stat().st_mode) == 0o600, name


def test_credentials_stay_out_of_logs_and_process_lists(services):
    secrets = {services["MLFLOW_TRACKING_PASSWORD"], services["AWS_SECRET_ACCESS_KEY"]}
    if os.environ.get("POSTGRES_PASSWORD"):
        secrets.add(os.environ["POSTGRES_PASSWORD"])
    secrets = {secret.encode() for secret in secrets}
    logs = [
        path
        for pattern in ("**/*.log", "**/*.stderr", "**/*.ini", "**/*.conf")
        for path in state_dir().glob(pattern)
        if path.is_file()
    ]
    assert any(path.name == "mlflow.log" for path in logs)
    for path in logs:
        content = path.read_bytes()
        assert not any(secret in content for secret in secrets), f"a credential is in {path}"
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes()
        except OSError:
            continue  # gone meanwhile
        assert not any(secret in args for secret in secrets), f"a credential is in {cmdline}"
