"""The S3 server (Ceph RGW) through boto3 and DVC: clear errors, and a push/pull round trip."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from image_finetune.errors import ServiceError
from tests.object_store import check_bucket
from tests.services import ROOT

VENV_BIN = ROOT / ".venv" / "bin"


def test_bucket_check_passes_with_the_right_credentials(services):
    check_bucket(services["S3_DVC_BUCKET"])


def test_wrong_credentials_are_a_clear_error(services, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ServiceError, match="credentials were rejected"):
        check_bucket(services["S3_DVC_BUCKET"])


def test_unreachable_server_and_missing_bucket_are_clear_errors(services):
    with pytest.raises(ServiceError, match="unreachable"):
        check_bucket("dvc", endpoint="http://127.0.0.1:1")
    with pytest.raises(ServiceError, match="no such bucket"):
        check_bucket(f"absent-{uuid.uuid4().hex[:8]}")


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    return subprocess.run(
        [str(VENV_BIN / "dvc"), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_dvc_push_then_pull_into_an_empty_cache_round_trips_the_outputs(
    services, small_folder, tmp_path
):
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tmp_path / name)
    params = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(
        params.replace("path: ../shared/data/cifar10-jpeg.tar.gz", f"path: {small_folder}")
    )
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    prefix = f"s3://{services['S3_DVC_BUCKET']}/{uuid.uuid4().hex[:8]}"
    for args in (
        ("remote", "add", "-f", "s3", prefix),
        ("remote", "modify", "s3", "endpointurl", services["S3_ENDPOINT_URL"]),
    ):
        assert dvc(tmp_path, *args).returncode == 0
    assert dvc(tmp_path, "repro", "ingest").returncode == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "data" / "ingested").iterdir()}
    pushed = dvc(tmp_path, "push", "-r", "s3", "ingest")
    assert pushed.returncode == 0, pushed.stderr
    shutil.rmtree(tmp_path / ".dvc" / "cache")
    shutil.rmtree(tmp_path / "data" / "ingested")
    pulled = dvc(tmp_path, "pull", "-r", "s3", "ingest")
    assert pulled.returncode == 0, pulled.stderr
    after = {p.name: p.read_bytes() for p in (tmp_path / "data" / "ingested").iterdir()}
    assert after == before and len(before) == 10  # 3 splits x (images, labels, sources) + manifest
