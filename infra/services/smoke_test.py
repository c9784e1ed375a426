"""Smoke test of the running service stack (S3 via boto3, MLflow tracking).

Run with the project's venv after ``eval "$(infra/services/all.sh env)"`` (which sets the
MLflow credentials, MLFLOW_TRACKING_USERNAME/PASSWORD, and the S3 keys):

    python infra/services/smoke_test.py write    # S3 put/get/list + an MLflow run
    python infra/services/smoke_test.py verify   # what `write` stored is still there

``write`` stores a marker object and an MLflow run (param, metric, artifact)
tagged with a fresh token, and records the token in
``$SERVICES_STATE_DIR/smoke_token``; ``verify`` reads them back, e.g. after
``all.sh stop && all.sh start`` to prove persistence.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

import boto3
import mlflow
from botocore.config import Config
from mlflow.tracking import MlflowClient

EXPERIMENT = "services-smoke-test"
MARKER_KEY = "smoke-test/marker.txt"


def _s3():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


def _token_file() -> Path:
    state = os.environ.get("SERVICES_STATE_DIR")
    if not state:
        sys.exit('SERVICES_STATE_DIR is not set: eval "$(bash infra/services/all.sh env)" first')
    return Path(state) / "smoke_token"


def _buckets() -> list[str]:
    return [os.environ.get("S3_MLFLOW_BUCKET", "mlflow"), os.environ.get("S3_DVC_BUCKET", "dvc")]


def check_s3_roundtrip(token: str) -> None:
    s3 = _s3()
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    missing = set(_buckets()) - names
    assert not missing, f"buckets missing: {missing} (have {names})"
    for bucket in _buckets():
        key = f"smoke-test/tmp-{token}.bin"
        body = os.urandom(256 * 1024)
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
        page = s3.list_objects_v2(Bucket=bucket, Prefix="smoke-test/")
        listed = [o["Key"] for o in page["Contents"]]
        assert key in listed, listed
        s3.delete_object(Bucket=bucket, Key=key)
    print(f"S3 put/get/list/delete OK on {sorted(_buckets())}")


def write() -> None:
    token = uuid.uuid4().hex
    check_s3_roundtrip(token)
    _s3().put_object(Bucket=_buckets()[1], Key=MARKER_KEY, Body=token.encode())

    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=f"smoke-{token[:8]}") as run:
        mlflow.set_tag("smoke_token", token)
        mlflow.log_param("token", token)
        mlflow.log_metric("value", 42.0)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "artifact.txt"
            path.write_text(token)
            mlflow.log_artifact(str(path))
    artifact_uri = mlflow.get_run(run.info.run_id).info.artifact_uri
    _token_file().write_text(token)
    print(f"MLflow run {run.info.run_id} logged (artifact_uri={artifact_uri})")

    # The artifact must have landed in the RGW bucket (proxied by the server).
    keys = [
        o["Key"]
        for o in _s3().list_objects_v2(Bucket=_buckets()[0]).get("Contents", [])
        if o["Key"].endswith(f"{run.info.run_id}/artifacts/artifact.txt")
    ]
    assert keys, "artifact not found in the MLflow bucket"
    print(f"artifact stored in s3://{_buckets()[0]}/{keys[0]}")


def verify() -> None:
    token = _token_file().read_text().strip()
    marker = _s3().get_object(Bucket=_buckets()[1], Key=MARKER_KEY)["Body"].read().decode()
    assert marker == token, f"S3 marker {marker!r} != token {token!r}"
    print("S3 marker object survived")

    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp is not None, "experiment missing"
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.smoke_token = '{token}'")
    assert len(runs) == 1, f"expected 1 run with the token, found {len(runs)}"
    run = runs[0]
    assert run.data.params["token"] == token and run.data.metrics["value"] == 42.0
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="artifact.txt", dst_path=tmp
        )
        assert Path(local).read_text() == token
    print(f"MLflow run {run.info.run_id} and its artifact survived")
    check_s3_roundtrip(uuid.uuid4().hex)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "write"
    {"write": write, "verify": verify}[mode]()
