"""The real services killed with SIGKILL in the middle of an operation: each operation ends
with a clear error and its exit code, a retry succeeds once the service is back, nothing is
half-registered, no artifact is lost, and ``@champion`` always loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from image_finetune.config import RegistryParams
from image_finetune.data.canonical import load_split
from image_finetune.inference import load_classifier
from image_finetune.registry.versions import CHAMPION
from image_finetune.steps.evaluate import evaluate_classifier
from image_finetune.steps.final_gate import final_gate
from tests.services import ROOT, kill_hard, objects_under, run_services
from tests.support import wait_until

VENV_BIN = ROOT / ".venv" / "bin"
EXIT_CODES = (7, 9)  # ServiceError, RegistryError


@pytest.fixture(scope="module")
def candidate(services, small_model, tmp_path_factory) -> dict:
    """The session's small model, evaluated on test and past the final gate, to be
    registered under a name of this module's own."""
    work = tmp_path_factory.mktemp("faults")
    params = small_model["params"].model_copy(
        update={
            "registry": RegistryParams(
                tracking_uri=services["MLFLOW_TRACKING_URI"],
                model_name=f"faults-{uuid.uuid4().hex[:8]}",
            )
        }
    )
    data, model = small_model["data"], small_model["model"]
    evaluate_classifier(params, data, model, work / "evaluation", "test")
    final_gate(params, work / "evaluation", work / "gate.json")
    params_file = work / "params.json"
    params_file.write_text(json.dumps(params.model_dump(mode="json", by_alias=True)))
    return {
        "params": params,
        "params_file": params_file,
        "data": data,
        "model": model,
        "work": work,
    }


REGISTER = """
import sys
import typer
from pathlib import Path
from image_finetune.config import load_params
from image_finetune.console import reported
from image_finetune.steps.register import register_classifier

@reported
def main(params_file, data, model, work, run_id):
    work = Path(work)
    print(register_classifier(load_params(params_file, use_env=False), Path(data),
                              work / "evaluation", work / "gate.json", work / "out.json",
                              Path.cwd(), model=Path(model), pipeline_run_id=run_id))

try:
    main(*sys.argv[1:])
except typer.Exit as stop:  # what the image-finetune command line does with it
    sys.exit(stop.exit_code)
"""


def register(candidate: dict, run_id: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            REGISTER,
            str(candidate["params_file"]),
            str(candidate["data"]),
            str(candidate["model"]),
            str(candidate["work"]),
            run_id,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def when(condition, timeout: float = 120) -> None:
    wait_until(condition, timeout, 0.1, "the operation never got that far")


def client():
    import mlflow

    return mlflow.MlflowClient()


def parent_runs(candidate: dict, run_id: str) -> list:
    import mlflow

    experiment = mlflow.get_experiment_by_name(candidate["params"].registry.experiment)
    if experiment is None:
        return []
    return client().search_runs(
        [experiment.experiment_id], f"tags.pipeline_run_id = '{run_id}' and tags.kind = 'pipeline'"
    )


def assert_champion_loads(candidate: dict) -> None:
    import mlflow

    name = candidate["params"].registry.model_name
    try:
        client().get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return  # no champion yet: nothing that could fail to load
    images = np.asarray(load_split(candidate["data"], "test").images[:8])
    loaded = mlflow.keras.load_model(f"models:/{name}@{CHAMPION}")
    np.testing.assert_allclose(
        np.asarray(loaded.predict_on_batch(images)),
        np.asarray(load_classifier(candidate["model"]).predict_on_batch(images)),
        atol=1e-5,
    )


def test_mlflow_server_killed_during_registration(candidate):
    run_id = f"faults-{uuid.uuid4().hex[:8]}"
    registering = register(candidate, run_id)
    when(lambda: parent_runs(candidate, run_id))  # the run exists: registration is under way
    kill_hard("mlflow_server")
    _, stderr = registering.communicate(timeout=180)
    assert registering.returncode in EXIT_CODES, stderr[-2000:]
    assert "error:" in stderr and "Traceback" not in stderr
    run_services("start", "mlflow_server")
    retry = register(candidate, run_id)
    stdout, stderr = retry.communicate(timeout=300)
    assert retry.returncode == 0, stderr[-2000:]
    name = candidate["params"].registry.model_name
    versions = client().search_model_versions(
        f"name = '{name}' and tags.pipeline_run_id = '{run_id}'"
    )
    assert len(versions) == 1 and versions[0].status == "READY"  # nothing half-registered
    [run] = parent_runs(candidate, run_id)
    assert run.info.status == "FINISHED"
    assert_champion_loads(candidate)


PROMOTE = """
import sys
import typer
from image_finetune.config import RegistryParams
from image_finetune.console import reported
from image_finetune.registry.promotion import promote

@reported
def main(uri, name, version):
    print(promote(RegistryParams(tracking_uri=uri, model_name=name), version, "faults"))

try:
    main(*sys.argv[1:])
except typer.Exit as stop:
    sys.exit(stop.exit_code)
"""


def test_postgres_killed_during_a_promotion(candidate, monkeypatch):
    params = candidate["params"]
    name = params.registry.model_name
    version = register_directly(candidate)
    monkeypatch.setenv("IMAGE_FINETUNE_LOCK_LEASE", "2")  # the dead holder's lock: 2 s
    monkeypatch.setenv("IMAGE_FINETUNE_LOCK_TIMEOUT", "30")
    lock_taken = threading.Event()
    promoting = subprocess.Popen(
        [sys.executable, "-c", PROMOTE, params.registry.tracking_uri, name, version],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )

    def locked() -> bool:
        found = client().search_registered_models(f"name LIKE '{name}.promotion-lock.g%'")
        if found:
            lock_taken.set()
        return bool(found) or promoting.poll() is not None

    when(locked)
    kill_hard("postgres")
    _, stderr = promoting.communicate(timeout=300)
    run_services("start", "postgres")
    if lock_taken.is_set() and promoting.returncode != 0:
        assert promoting.returncode in EXIT_CODES, stderr[-2000:]
        assert "Traceback" not in stderr
    assert_champion_loads(candidate)  # whatever happened, the alias points at a model
    retry = subprocess.run(
        [sys.executable, "-c", PROMOTE, params.registry.tracking_uri, name, version],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert client().get_model_version_by_alias(name, CHAMPION).version == version
    history = json.loads(
        max(
            (
                v
                for k, v in client().get_registered_model(name).tags.items()
                if k.startswith("promotion.")
            ),
            key=lambda v: json.loads(v)["seq"],
        )
    )
    assert history["version"] == version
    assert_champion_loads(candidate)


def register_directly(candidate: dict) -> str:
    """A fresh registered version of the candidate (not promoted)."""
    run_id = f"faults-{uuid.uuid4().hex[:8]}"
    process = register(candidate, run_id)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    return json.loads((candidate["work"] / "out.json").read_text())["version"]


def dvc(project: Path, *args: str, background: bool = False):
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    command = [str(VENV_BIN / "dvc"), *args]
    if background:
        return subprocess.Popen(
            command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=900
    )


def test_rgw_killed_during_dvc_push(services, tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert dvc(tmp_path, "init", "-q").returncode == 0
    payload = tmp_path / "payload"
    payload.mkdir()
    rng = np.random.default_rng(0)
    for index in range(48):  # incompressible, in many objects: the push takes a while
        (payload / f"part-{index:02d}.bin").write_bytes(rng.bytes(8 * 1024 * 1024))
    assert dvc(tmp_path, "add", "payload").returncode == 0
    prefix = f"faults-{uuid.uuid4().hex[:8]}"
    remote = f"s3://{services['S3_DVC_BUCKET']}/{prefix}"
    for args in (
        ("remote", "add", "-d", "s3", remote),
        ("remote", "modify", "s3", "endpointurl", services["S3_ENDPOINT_URL"]),
    ):
        assert dvc(tmp_path, *args).returncode == 0
    pushing = dvc(tmp_path, "push", background=True)
    # Under way: the first objects have landed (the directory listing goes last). A fixed
    # sleep was a race: on a fast run the whole push finished before the kill.
    when(lambda: objects_under(services, prefix) > 0 or pushing.poll() is not None)
    assert pushing.poll() is None, "the push finished before RGW could be killed"
    kill_hard("radosgw")
    _, stderr = pushing.communicate(timeout=600)
    run_services("start", "ceph_rgw")
    assert pushing.returncode != 0 and "Traceback" not in stderr
    pushed = dvc(tmp_path, "push")
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in payload.iterdir()}
    shutil.rmtree(tmp_path / ".dvc" / "cache")
    shutil.rmtree(payload)
    pulled = dvc(tmp_path, "pull")
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in payload.iterdir()} == before  # nothing lost
