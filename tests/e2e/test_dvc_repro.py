"""`dvc repro` end to end on a small real subset: the retrain loop, its outputs, the
no-op second run, and a run where every rung fails."""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from image_finetune.registry.versions import download_engine, download_reference_profile
from tests.caches import shared_training_cache
from tests.support import small_run_params

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"


def project_copy(
    tmp: Path, folder: Path, weights: Path, gate: dict, cache: Path | None = None
) -> Path:
    """The project's tracked files in a fresh git repo, with small-run params (and, given,
    a training cache shared with other runs in place of its own)."""
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tmp / name)
    params = small_run_params(folder, weights, gate)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=tmp, check=True)
    if cache is not None:
        (tmp / ".cache").mkdir()
        (tmp / ".cache" / "image_finetune").symlink_to(cache, target_is_directory=True)
    return tmp


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    for leaking in (
        "IMAGE_FINETUNE_DATA",
        "IMAGE_FINETUNE_WEIGHTS",
        "IMAGE_FINETUNE_CACHE",
        "MLFLOW_TRACKING_URI",
    ):
        env.pop(leaking, None)  # a developer's shell must not redirect the run
    return subprocess.run(
        [str(VENV_BIN / "dvc"), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )


@pytest.fixture(scope="module")
def repro(small_folder, no_top_weights, tmp_path_factory):
    project = project_copy(
        tmp_path_factory.mktemp("project"),
        small_folder,
        no_top_weights,
        {
            "min_accuracy": 0.3,
            "min_macro_f1": 0.2,
            "min_class_recall": 0.0,
            "max_latency_p95_ms": 2000,
        },
        shared_training_cache(tmp_path_factory),
    )
    result = dvc(project, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return project, result


def test_the_loop_retrains_when_the_first_rung_fails(repro):
    project, _ = repro
    summary = json.loads((project / "models" / "summary.json").read_text())
    assert [a["passed"] for a in summary["attempts"]] == [False, True]
    assert summary["selected"] == 1
    assert summary["attempts"][0]["failures"][0].startswith("FAIL accuracy")
    assert summary["attempts"][1]["failures"] == []
    for index in (0, 1):  # every attempt's evidence stays visible
        attempt = project / "models" / f"attempt_{index}"
        assert (attempt / "decision.json").exists() and (attempt / "history.csv").exists()
        assert (attempt / "evaluation" / "report.html").exists()
    assert (project / "models" / "selected" / "model.keras").exists()
    history = (project / "models" / "history.csv").read_text().splitlines()
    assert history[0].startswith("step,attempt,") and len(history) == 1 + 1 + 2


def test_attempts_are_judged_on_validation_and_only_the_final_step_reads_test(repro):
    project, _ = repro
    manifest = json.loads((project / "data" / "ingested" / "manifest.json").read_text())
    for index in (0, 1):
        metrics = json.loads(
            (project / "models" / f"attempt_{index}" / "evaluation" / "metrics.json").read_text()
        )
        assert metrics["count"] == manifest["splits"]["validation"]["count"]
    final = json.loads((project / "reports" / "evaluation" / "metrics.json").read_text())
    assert final["count"] == manifest["splits"]["test"]["count"] == 100


def test_final_report_and_gate(repro):
    project, _ = repro
    report = project / "reports" / "evaluation"
    details = json.loads((report / "details.json").read_text())
    for key in (
        "accuracy",
        "macro_f1",
        "accuracy_ci95",
        "ece",
        "per_class",
        "most_confused",
        "latency",
        "model_size_mb",
    ):
        assert key in details
    assert len(details["confusion_matrix"]) == 10
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    gate = json.loads((project / "reports" / "gate.json").read_text())
    assert gate["passed"] is True and gate["split"] == "test"
    # The test figures are the serving engine's, as the export-engine stage chose it.
    engine = json.loads((project / "engine" / "engine.json").read_text())
    assert (details["engine"], details["precision"]) == (
        engine["default_engine"],
        engine["serving_precision"],
    )
    assert all(a["disagreements"] == 0 for a in engine["agreement"].values())
    assert (project / "reports" / "validation" / "data_docs" / "index.html").exists()
    assert (project / "reports" / "augment" / "preview.png").exists()


def test_the_winner_is_registered_and_promoted_in_the_projects_own_store(repro):
    import mlflow

    project, result = repro
    outcome = json.loads((project / "reports" / "registration.json").read_text())
    assert outcome["registered"] and outcome["promoted"] and outcome["version"] == "1"
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    version = client.get_model_version_by_alias("cifar10-classifier", "champion")
    assert str(version.version) == "1" and version.run_id == outcome["model_uri"].split("/")[1]
    assert version.tags["pipeline_run_id"] == outcome["pipeline_run_id"]
    assert json.loads(version.tags["class_names"])[0] == "airplane"
    # MLflow 3: a LoggedModel, the run's test figures linked to it, what a client needs to
    # use it in its metadata, the commit under MLflow's own tag.
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.source_run_id == version.run_id and logged.name == "model"
    linked = {m.key: m.value for m in logged.metrics}
    assert linked["test_accuracy"] == client.get_run(version.run_id).data.metrics["test_accuracy"]
    mlmodel = Path(urlparse(logged.artifact_location).path) / "MLmodel"
    assert yaml.safe_load(mlmodel.read_text())["metadata"] == {
        "class_names": json.loads(version.tags["class_names"]),
        "image_fit": "resize",
    }
    assert client.get_run(version.run_id).data.tags["mlflow.source.git.commit"] == "unknown"
    # The profile stage's reference profile travels with the version, tagged with it.
    profile = download_reference_profile(client, "cifar10-classifier", "1", project / "ref")
    assert json.loads((profile / "profile.json").read_text())["model_version"] == "1"
    # And the engine folder the server runs, tagged with what serves.
    engine = download_engine(client, "cifar10-classifier", "1", project / "eng")
    manifest = json.loads((engine / "engine.json").read_text())
    assert version.tags["engine"] == manifest["default_engine"]
    assert version.tags["engine_precision"] == manifest["serving_precision"]
    attempts = client.search_runs(
        [client.get_run(version.run_id).info.experiment_id], "tags.kind = 'attempt'"
    )
    assert sorted(r.data.tags["gate_passed"] for r in attempts) == ["False", "True"]
    # The model card tells the loop's story: both attempts, the first one's failed checks.
    card = Path(client.download_artifacts(version.run_id, "model_card.md", str(project)))
    text = card.read_text()
    assert "| 0 | `hopeless-head` |" in text and "| 1 | `top-blocks` |" in text
    assert "| failed | FAIL accuracy" in text and "2 attempt(s), rung `top-blocks` passed" in (
        version.description
    )
    # Rung 1 starts from rung 0's weights: the loop chains its attempts (or reuses a finished
    # attempt of another test from the shared cache, whose key holds its warm start's hash).
    output = result.stdout + result.stderr
    assert (
        "warm start from models/attempt_0/model.keras" in output
        or "rung 1 'top-blocks': reusing the finished attempt" in output
    )


def test_second_repro_is_a_no_op(repro):
    project, _ = repro
    start = time.perf_counter()
    result = dvc(project, "repro")
    elapsed = time.perf_counter() - start
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # Only the sources are looked at again (DVC always runs that stage); nothing else runs.
    assert re.findall(r"Running stage '([^']+)'", output) == ["locate-sources"]
    for stage in ("ingest", "train", "export-engine", "evaluate", "register"):
        assert f"Stage '{stage}' didn't change, skipping" in output
    print(f"no-op dvc repro: {elapsed:.2f} s")


def test_every_rung_failing_fails_the_run_with_reasons(repro, tmp_path):
    # A copy: the other tests here keep the passing run's project, whatever the order.
    project = shutil.copytree(repro[0], tmp_path / "project", symlinks=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["gate"]["min_accuracy"] = 0.999
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = dvc(project, "repro")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "every rung of the ladder failed the gate" in output
    assert "attempt 0 (hopeless-head): FAIL accuracy" in output
    assert "attempt 1 (top-blocks): FAIL accuracy" in output
    assert not (project / "models" / "selected").exists()
    summary = json.loads((project / "models" / "summary.json").read_text())
    assert summary["selected"] is None and len(summary["attempts"]) == 2
