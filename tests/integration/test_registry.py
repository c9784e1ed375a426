"""Registry and promotion against the real MLflow server (PostgreSQL + Ceph RGW), on
models trained on real CIFAR-10 images with real pretrained weights."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from packaging.requirements import Requirement

from image_finetune.config import Params, RegistryParams
from image_finetune.data.canonical import load_split
from image_finetune.inference import load_classifier
from image_finetune.registry.promotion import promote, promotion_history, rollback
from image_finetune.registry.versions import CHALLENGER, CHAMPION, list_versions
from image_finetune.steps.evaluate import evaluate_classifier
from image_finetune.steps.final_gate import final_gate
from image_finetune.steps.register import register_classifier
from image_finetune.steps.train_rung import train_rung
from tests.services import ROOT, run_services
from tests.support import jpeg_bytes
from tests.unit.test_model_card import check_portable


@pytest.fixture(scope="module")
def setup(services, small_model, tmp_path_factory):
    """Params pointing at the server, the session's small real dataset and trained model."""
    work = tmp_path_factory.mktemp("registry")
    params = small_model["params"].model_copy(
        update={
            "registry": RegistryParams(
                tracking_uri=services["MLFLOW_TRACKING_URI"],
                model_name=f"it-{uuid.uuid4().hex[:8]}",
            )
        }
    )
    return params, small_model["data"], small_model["model"], work


def candidate(
    setup,
    name: str,
    run_id: str | None = None,
    model: Path | None = None,
    register_model: Path | None = None,
) -> dict:
    """Evaluate a model (the trained one by default) on test, decide against the champion,
    and register it (or ``register_model``, to make registration fail)."""
    params, data, model_path, work = setup
    model = model or model_path
    evaluation = work / name / "evaluation"
    evaluate_classifier(params, data, model, evaluation, "test", name)
    decision = work / name / "gate.json"
    final_gate(params, evaluation, decision)
    return register_classifier(
        params,
        data,
        evaluation,
        decision,
        work / name / "registration.json",
        ROOT,
        model=register_model or model,
        pipeline_run_id=run_id or f"it-{name}-{uuid.uuid4().hex[:6]}",
        lineage_extra={"git_commit": "test"},
    )


def work_of(setup) -> Path:
    return setup[3]


def own_model(setup) -> tuple:
    """``setup`` with a registered model name of its own: tests never share versions or
    aliases, so each runs alone and in any order."""
    params = setup[0]
    registry = params.registry.model_copy(update={"model_name": f"it-{uuid.uuid4().hex[:8]}"})
    return (params.model_copy(update={"registry": registry}), *setup[1:])


def copies(source: Params, versions: list[str]) -> Params:
    """A new registered model whose versions 1, 2, ... are copies of ``source``'s
    ``versions`` (MLflow's copy_model_version: no re-logging), with no aliases yet."""
    import mlflow

    client = mlflow.MlflowClient()
    own = own_model((source,))[0]
    for version in versions:
        client.copy_model_version(
            f"models:/{source.registry.model_name}/{version}", own.registry.model_name
        )
    return own


@pytest.fixture(scope="module")
def registered(setup) -> dict:
    """A model of its own with the trained candidate registered twice: v1 (first, promoted)
    and v2 (the same model again: inside the noise, not promoted)."""
    own = own_model(setup)
    return {
        "setup": own,
        "first": candidate(own, "first"),
        "same-again": candidate(own, "same-again"),
    }


def aliases(params: Params) -> dict[str, str]:
    return {
        alias: row["version"] for row in list_versions(params.registry) for alias in row["aliases"]
    }


def test_register_promote_and_serve_the_champion(registered):
    import mlflow

    setup = registered["setup"]
    params, data, model_path, _ = setup
    outcome = registered["first"]
    assert outcome["registered"] and outcome["promoted"] and outcome["version"] == "1"
    assert aliases(params)[CHAMPION] == "1"
    images = np.asarray(load_split(data, "test").images[:32])
    expected = np.asarray(load_classifier(model_path).predict_on_batch(images))
    uri = f"models:/{params.registry.model_name}@{CHAMPION}"
    loaded = mlflow.keras.load_model(uri)
    np.testing.assert_allclose(np.asarray(loaded.predict_on_batch(images)), expected, atol=1e-5)
    # The pyfunc flavor takes encoded images (base64) and answers labels and probabilities.
    pyfunc = mlflow.pyfunc.load_model(uri)
    encoded = [base64.b64encode(jpeg_bytes(image)).decode() for image in images[:4]]
    answered = pyfunc.predict(pd.DataFrame({"image": encoded}))
    names = json.loads((data / "manifest.json").read_text())["class_names"]
    assert set(answered["label"]) <= set(names)
    assert np.stack(answered["probabilities"]).shape == (4, len(names))
    version = mlflow.MlflowClient().get_model_version(params.registry.model_name, "1")
    # Lineage against values computed here, independently of the code under test.
    manifest = data / "manifest.json"
    assert version.tags["data_manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    canonical = json.dumps(params.model_dump(mode="json", by_alias=True), sort_keys=True)
    assert version.tags["params_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert (
        json.loads(version.tags["class_names"]) == json.loads(manifest.read_text())["class_names"]
    )
    assert version.tags["pipeline_run_id"].startswith("it-first-")
    assert version.tags["git_commit"] == "test"  # lineage_extra overrides the checkout's commit
    run = mlflow.MlflowClient().get_run(version.run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(
        json.loads((work_of(setup) / "first" / "evaluation" / "metrics.json").read_text())[
            "accuracy"
        ]
    )
    requirements = (
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=version.run_id,
                artifact_path="model/requirements.txt",
                dst_path=str(work_of(setup) / "first"),
            )
        )
        .read_text()
        .splitlines()
    )
    assert {Requirement(r).name for r in requirements} == {
        "mlflow",
        "keras",
        "numpy",
        "tensorflow-cpu",
        "tensorflow",
        "pandas",
        "pillow",
        "pydantic",
    }
    check_portable(requirements)


def test_the_version_has_a_card_and_its_data_as_dataset_inputs_on_the_server(registered):
    import mlflow

    params, data, _, work = registered["setup"]
    client = mlflow.MlflowClient()
    version = client.get_model_version(params.registry.model_name, "1")
    assert "test accuracy" in version.description
    page = Path(client.download_artifacts(version.run_id, "model_card.html", str(work)))
    assert hashlib.sha256((data / "manifest.json").read_bytes()).hexdigest() in page.read_text()
    contexts = sorted(
        tag.value
        for item in client.get_run(version.run_id).inputs.dataset_inputs
        for tag in item.tags
        if tag.key == "mlflow.data.context"
    )
    assert contexts == ["test", "training", "validation"]


def test_a_candidate_inside_the_noise_is_registered_but_not_promoted(registered):
    params = registered["setup"][0]
    outcome = registered["same-again"]
    assert outcome["registered"] and not outcome["promoted"]
    assert "beats_champion" in outcome["reason"]
    assert aliases(params) == {CHAMPION: "1", CHALLENGER: "2"}


def test_rollback_restores_the_previous_champion(registered):
    params = copies(registered["setup"][0], ["1", "2"])
    promote(params.registry, "1", "release")
    promote(params.registry, "2", "manual promotion in a test")
    assert aliases(params)[CHAMPION] == "2"
    entry = rollback(params.registry, "bad release")
    assert entry["version"] == "1" and entry["previous"] == "2"
    assert aliases(params)[CHAMPION] == "1"
    history = promotion_history(params.registry)
    assert [(e["action"], e["version"], e["previous"]) for e in history] == [
        ("promote", "1", None),
        ("promote", "2", "1"),
        ("rollback", "1", "2"),
    ]
    assert all(e["at"] and e["by"] and e["reason"] for e in history)


def test_racing_promotions_leave_one_champion_and_a_consistent_history(registered):
    params = copies(registered["setup"][0], ["1", "2", "1"])  # three versions
    promote(params.registry, "1", "release")
    before = len(promotion_history(params.registry))
    script = (
        "import sys; from image_finetune.config import RegistryParams; "
        "from image_finetune.registry.promotion import promote; "
        "promote(RegistryParams(tracking_uri=sys.argv[1], model_name=sys.argv[2]), "
        "sys.argv[3], 'race')"
    )
    racers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                params.registry.tracking_uri,
                params.registry.model_name,
                version,
            ],
            env=os.environ.copy(),
        )
        for version in ("2", "3")
    ]
    assert [r.wait(timeout=180) for r in racers] == [0, 0]
    history = promotion_history(params.registry)[before:]
    assert sorted(e["version"] for e in history) == ["2", "3"]
    assert history[0]["previous"] == "1" and history[1]["previous"] == history[0]["version"]
    assert aliases(params)[CHAMPION] == history[1]["version"]
    import mlflow

    lock = f"{params.registry.model_name}.promotion-lock.g"
    left = mlflow.MlflowClient().search_registered_models(f"name LIKE '{lock}%'")
    assert [m.name for m in left if m.name.startswith(lock)] == []  # nothing in Models


def test_a_stopped_server_fails_fast_and_a_restart_keeps_everything(registered, services):
    params, data, model_path, work = registered["setup"]
    champion = aliases(params)[CHAMPION]
    params_file = work / "params.yaml"
    params_file.write_text(json.dumps(params.model_dump(mode="json", by_alias=True)))
    run_services("stop", "mlflow_server")
    try:
        start = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "image_finetune.cli", "models", "-p", str(params_file)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.monotonic() - start
        assert result.returncode == 7, result.stderr
        assert "is unreachable" in result.stderr and "Outputs on disk are kept" in result.stderr
        assert elapsed < 30
        assert model_path.exists()
    finally:
        run_services("stop")
        run_services("start")
    import mlflow

    assert aliases(params)[CHAMPION] == champion
    reloaded = mlflow.keras.load_model(f"models:/{params.registry.model_name}@{CHAMPION}")
    images = np.asarray(load_split(data, "test").images[:8])
    np.testing.assert_allclose(
        np.asarray(reloaded.predict_on_batch(images)),
        np.asarray(load_classifier(model_path).predict_on_batch(images)),
        atol=1e-5,
    )


def pipeline_runs(params: Params, run_id: str) -> list:
    import mlflow

    experiment = mlflow.get_experiment_by_name(params.registry.experiment)
    return mlflow.MlflowClient().search_runs(
        [experiment.experiment_id], f"tags.pipeline_run_id = '{run_id}' and tags.kind = 'pipeline'"
    )


def test_a_retried_registration_reuses_its_run_and_its_version(setup):
    import mlflow

    setup = own_model(setup)
    params = setup[0]
    run_id = f"it-retry-{uuid.uuid4().hex[:6]}"
    first = candidate(setup, "retry-1", run_id)
    again = candidate(setup, "retry-2", run_id)  # what a KFP retry of the task does
    assert first["registered"] and again["version"] == first["version"]
    versions = mlflow.MlflowClient().search_model_versions(
        f"name = '{params.registry.model_name}' and tags.pipeline_run_id = '{run_id}'"
    )
    assert [v.version for v in versions] == [first["version"]]
    [run] = pipeline_runs(params, run_id)
    assert run.info.status == "FINISHED"


def test_a_registration_that_fails_ends_its_run_failed(setup, tmp_path):
    from image_finetune.errors import MissingInputError

    setup = own_model(setup)
    params = setup[0]
    run_id = f"it-broken-{uuid.uuid4().hex[:6]}"
    with pytest.raises(MissingInputError):
        candidate(setup, "broken", run_id, register_model=tmp_path / "gone.keras")
    [run] = pipeline_runs(params, run_id)
    assert run.info.status == "FAILED"


def test_a_significantly_better_candidate_replaces_the_champion(setup):
    """A weak champion (a head that never learnt) and a trained candidate (96 px, as the
    default profile sees images) on the same test images: the final gate's McNemar test
    says the candidate wins, and it is promoted."""
    params, data, _, work = setup

    def rung(name: str, epochs: int, learning_rate: float) -> Params:
        return params.model_copy(
            update={
                "model": params.model.model_copy(update={"image_size": 96}),
                "train": params.train.model_copy(
                    update={
                        "ladder": [
                            params.train.ladder[0].model_copy(
                                update={
                                    "name": name,
                                    "epochs": epochs,
                                    "learning_rate": learning_rate,
                                }
                            )
                        ]
                    }
                ),
                "registry": params.registry.model_copy(
                    update={"model_name": f"it-better-{uuid.uuid4().hex[:8]}"}
                ),
            }
        )

    weak_params, strong_params = rung("hopeless", 1, 1e-7), rung("head", 10, 0.003)
    strong_params = strong_params.model_copy(update={"registry": weak_params.registry})
    weak = Path(train_rung(weak_params, 0, data, work / "weak", work / "cache", ROOT).model_path)
    strong = Path(
        train_rung(strong_params, 0, data, work / "strong", work / "cache", ROOT).model_path
    )
    first = candidate((weak_params, data, weak, work), "weak")
    assert first["promoted"] and first["version"] == "1"
    better = candidate((strong_params, data, strong, work), "better")
    assert better["promoted"] and better["version"] == "2", better["reason"]
    assert aliases(strong_params) == {CHAMPION: "2", CHALLENGER: "2"}
    decision = json.loads((work / "better" / "gate.json").read_text())
    [beats] = [c for c in decision["checks"] if c["name"] == "beats_champion"]
    assert beats["passed"] and beats["value"] < strong_params.gate.significance
    assert [(e["version"], e["previous"]) for e in promotion_history(strong_params.registry)] == [
        ("1", None),
        ("2", "1"),
    ]
