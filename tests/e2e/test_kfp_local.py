"""The Kubeflow pipeline under kfp.local (subprocess runner) on a small real subset: the
retrain loop goes round once and registers the winner; when every rung fails, the run fails
with the reasons and nothing is registered.

Both runs share kfp.local's task cache. The second changes only the gate section, so, as on
a cluster, only the steps that read it run again: the data steps, both rungs' training and
their validation evaluations come from the cache; the params check, the gates and the exit
task run.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from image_finetune.config import Params
from image_finetune.pipelines.local import LocalRun, run_local
from image_finetune.registry.lineage import git_commit
from tests.caches import shared_training_cache
from tests.kfp_outputs import decisions, executed, produced
from tests.support import PASSABLE_GATE, small_run_params

ROOT = Path(__file__).resolve().parents[2]
IMPOSSIBLE = {**PASSABLE_GATE, "min_accuracy": 0.999}


@dataclass(frozen=True)
class PipelineRun:
    """A local run, the params it ran with, and the repository's commit it was compiled at."""

    local: LocalRun
    params: Params
    commit: str


def small_run(folder: Path, weights: Path, tracking_db: Path, gate: dict) -> Params:
    """params.yaml for a small real subset, the two-rung ladder and its own MLflow store."""
    raw = small_run_params(folder, weights, gate)
    raw["registry"]["tracking_uri"] = f"sqlite:///{tracking_db}"
    return Params.model_validate(raw)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Shared by both runs: the second reuses the first's trained rungs and data steps."""
    return tmp_path_factory.mktemp("kfp-local")


@pytest.fixture(scope="module")
def training_cache(tmp_path_factory) -> Path:
    """The session's: the dvc repro run trained this same ladder on the same data."""
    return shared_training_cache(tmp_path_factory)


def run_pipeline(
    name: str, workspace: Path, cache: Path, folder: Path, weights: Path, gate: dict
) -> PipelineRun:
    params = small_run(folder, weights, workspace / f"{name}.db", gate)
    commit = git_commit(ROOT)
    run = run_local(params, ROOT, workspace / name, cache, enable_caching=True)
    print(f"kfp.local {name} run: {run.seconds:.0f} s")
    return PipelineRun(run, params, commit)


@pytest.fixture(scope="module")
def passing(workspace, training_cache, small_folder, no_top_weights) -> PipelineRun:
    return run_pipeline(
        "passing", workspace, training_cache, small_folder, no_top_weights, PASSABLE_GATE
    )


@pytest.fixture(scope="module")
def failing(passing, workspace, training_cache, small_folder, no_top_weights) -> PipelineRun:
    return run_pipeline(
        "failing", workspace, training_cache, small_folder, no_top_weights, IMPOSSIBLE
    )


def test_the_loop_retrains_once_and_registers_the_winner(passing):
    run, registry = passing.local, passing.params.registry
    assert run.succeeded, run.error
    validation = sorted(
        (d["rung"], d["passed"]) for d in produced(run, "decision") if d["split"] == "validation"
    )
    assert validation == [(0, False), (1, True)]
    assert sorted(m["rung"] for m in produced(run, "classifier")) == [0, 1]
    assert produced(run, "winner") == []  # rung 1 is the last: handed on without a copy
    [final] = [d for d in produced(run, "decision") if d["split"] == "test"]
    assert final["passed"] is True
    [registration] = produced(run, "registration")
    assert registration["registered"] is True and registration["promoted"] is True
    champion = MlflowClient(registry.tracking_uri).get_model_version_by_alias(
        registry.model_name, "champion"
    )
    assert int(champion.version) == int(registration["version"])
    assert champion.tags["git_commit"] == passing.commit and champion.tags["pipeline_run_id"]
    [status] = produced(run, "run_status")
    assert status["state"] == "SUCCEEDED"


def test_rungs_are_judged_on_validation_and_only_the_winner_on_test(passing):
    run = passing.local
    evaluations = produced(run, "evaluation")
    assert sorted((e["split"], e["rung"]) for e in evaluations) == [
        ("test", 1),
        ("validation", 0),
        ("validation", 1),
    ]
    [test] = [e for e in evaluations if e["split"] == "test"]
    assert test["count"] == 100
    # the winner is measured on the engine that serves it; the rungs on Keras
    [engine] = produced(run, "engine_folder")
    assert (test["engine"], test["precision"]) == (
        engine["default_engine"],
        engine["serving_precision"],
    )
    assert {e["engine"] for e in evaluations if e["split"] == "validation"} == {"tensorflow"}
    report = Path(test["uri"]).parent / "report"  # the same task's HTML output
    assert "Rung 1 (top-blocks) on test" in report.read_text()
    matrices = [m["confusionMatrix"] for m in produced(run, "confusion")]
    assert len(matrices) == 3 and all(len(m["rows"]) == 10 for m in matrices)


def test_every_rung_failing_fails_the_run_and_registers_nothing(failing):
    run = failing.local
    assert not run.succeeded
    assert "'gate-attempt' inside 'attempt-1'" in run.error  # the last rung's gate ended it
    assert sorted((d["split"], d["passed"]) for d in decisions(run)) == [
        ("validation", False),
        ("validation", False),
    ]
    assert all(any(r.startswith("FAIL accuracy") for r in d["reasons"]) for d in decisions(run))
    # The last gate knows the whole loop, as dvc repro's train stage does.
    [last] = [d for d in decisions(run) if d["index"] == 1]
    assert [(r["index"], r["rung"], r["passed"]) for r in last["ladder"]] == [
        (0, "hopeless-head", False),
        (1, "top-blocks", False),
    ]
    assert all(r["failures"][0].startswith("FAIL accuracy") for r in last["ladder"])
    # Only what reads the changed section ran; no test evaluation, final gate or registration.
    assert executed(run) == {"check-params", "gate-attempt", "record-status"}
    assert MlflowClient(failing.params.registry.tracking_uri).search_registered_models() == []
    [status] = produced(run, "run_status")
    assert status["state"] == "FAILED"
