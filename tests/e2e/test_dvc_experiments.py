"""DVC experiments on a small real project, as a user runs them: `dvc exp run -S` in the
workspace, `--temp`, and a queue started with `dvc queue start -j 2`; `dvc exp show`, `exp
diff`, `exp apply`, `plots diff`; `dvc metrics show` on a fresh clone reads every figure from
git. An experiment registers a challenger in the project's own store and never moves
@champion. Temporary and queued experiments share the workspace's training cache: a gate-only
one neither embeds nor trains, and its figures are the workspace's."""

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.caches import shared_training_cache
from tests.e2e.test_dvc_repro import dvc, project_copy
from tests.services import objects_under
from tests.support import FAIL_THEN_PASS_LADDER

GATE = {
    "min_accuracy": 0.3,
    "min_macro_f1": 0.2,
    "min_class_recall": 0.0,
    "max_latency_p95_ms": 2000,
}
MODEL = "cifar10-classifier"
LADDER = tuple(rung["name"] for rung in FAIL_THEN_PASS_LADDER)
FIGURES = ("metrics/train.json", "metrics/evaluation.json")
QUEUED = {"queued": 0.27, "queued-too": 0.265}  # gate-only: both reuse the workspace's attempts
# One user's session in steps: later experiments build on earlier ones (kept in order).
# Each experiment sets its own gate.min_accuracy (0.25 to 0.28), well below what the second
# rung reaches on this subset (about a third) and above the hopeless first rung's (~0.08).
pytestmark = pytest.mark.ordered


def git(project: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def dvc_ok(project: Path, *args: str) -> str:
    result = dvc(project, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def experiment(shown: list, name: str) -> dict:
    """An experiment's record in `dvc exp show --json` (nested under its baseline)."""
    for baseline in shown:
        for branch in baseline.get("experiments") or []:
            for rev in branch["revs"]:
                if rev.get("name") == name:
                    return rev
    raise AssertionError(f"no experiment {name!r} in dvc exp show")


def figures(record: dict, path: str) -> dict:
    return record["data"]["metrics"][path]["data"]


def without_timings(values: dict) -> dict:
    return {k: v for k, v in values.items() if "latency" not in k and "seconds" not in k}


def model_figures(record: dict) -> dict:
    """An experiment's figures of its models (its timings left out)."""
    return {path: without_timings(figures(record, path)) for path in FIGURES}


def workspace_figures(project: Path) -> dict:
    return {path: without_timings(json.loads((project / path).read_text())) for path in FIGURES}


def assert_reused_every_attempt(log: str) -> None:
    """The run's log shows both attempts taken from the cache: nothing embedded or trained."""
    for index, rung in enumerate(LADDER):
        assert f"rung {index} {rung!r}: reusing the finished attempt" in log, log[-3000:]
    assert "embed" not in log and "mode=" not in log, log[-3000:]


def assert_cache_whole(cache: Path) -> None:
    """Every entry of the shared cache names its key and holds what it should; no staging
    left behind by the runs that shared it."""
    from image_finetune.cache import ATTEMPTS, FEATURES, holds_key, list_entries

    entries = list_entries(cache)
    assert {e.kind for e in entries} >= {ATTEMPTS, FEATURES}
    for entry in entries:
        assert [p.name for p in entry.paths if p.name.startswith(".")] == [], entry
        if entry.kind in (ATTEMPTS, FEATURES):
            assert holds_key(cache / entry.kind / entry.key, entry.key), entry
    for features in (cache / FEATURES).glob("*/*.npy"):
        assert len(np.load(features, mmap_mode="r")) > 0, features


def registry(project: Path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


@pytest.fixture(scope="module")
def project(small_folder, no_top_weights, tmp_path_factory):
    """A committed project and its first experiment, run in the workspace."""
    project = project_copy(
        tmp_path_factory.mktemp("experiments"),
        small_folder,
        no_top_weights,
        GATE,
        shared_training_cache(tmp_path_factory),
    )
    # Relative, as the default ../shared: a temporary copy must find them from elsewhere.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["path"] = os.path.relpath(small_folder, project)
    params["model"].update(weights="auto", weights_file=os.path.relpath(no_top_weights, project))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "baseline")
    dvc_ok(project, "exp", "run", "-n", "lenient", "-S", "gate.min_accuracy=0.25")
    return project


def test_an_experiment_registers_a_challenger_and_leaves_the_champion_alone(project):
    from mlflow.exceptions import MlflowException

    outcome = json.loads((project / "reports" / "registration.json").read_text())
    assert outcome["registered"] and not outcome["promoted"]
    assert "DVC experiment lenient: registered as challenger" in outcome["reason"]
    version = registry(project).get_model_version_by_alias(MODEL, "challenger")
    assert version.tags["dvc_experiment"] == "lenient"
    assert version.tags["mlflow.source.git.commit"] == git(project, "rev-parse", "HEAD")
    assert version.tags["dvc_experiment_baseline"] == git(project, "rev-parse", "HEAD")
    with pytest.raises(MlflowException):  # the gate passed and nothing was champion: still none
        registry(project).get_model_version_by_alias(MODEL, "champion")


def test_exp_show_has_every_figure_flat(project):
    record = experiment(json.loads(dvc_ok(project, "exp", "show", "--json")), "lenient")
    test = figures(record, "metrics/evaluation.json")
    assert {
        "accuracy",
        "macro_f1",
        "accuracy_ci95.low",
        "accuracy_ci95.high",
        "per_class.airplane.recall",
        "per_class.truck.f1",
    } <= set(test)
    assert test["accuracy_ci95.low"] <= test["accuracy"] <= test["accuracy_ci95.high"]
    ladder = figures(record, "metrics/train.json")
    assert ladder["selected"] == 1 and ladder["attempt_0.passed"] == 0
    assert ladder["attempt_1.val_accuracy"] > 0
    live = figures(record, "dvclive/metrics.json")  # DVCLive: the last epoch's figures
    assert {"accuracy", "loss"} <= set(live["eval"]) and live["step"] >= 1


def test_dvclive_has_every_attempts_epochs_on_one_axis(project):
    history = (project / "models" / "history.csv").read_text().splitlines()[1:]
    curve = project / "dvclive" / "plots" / "metrics" / "eval" / "accuracy.tsv"
    rows = curve.read_text().splitlines()[1:]
    assert [int(row.split("\t")[0]) for row in rows] == list(range(len(history)))
    assert len(history) >= 2  # both attempts' epochs


@pytest.fixture(scope="module")
def applied(project):
    """The first experiment applied and committed: the new baseline."""
    dvc_ok(project, "exp", "apply", "lenient")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "apply lenient")
    return project


def test_a_fresh_clone_shows_every_figure_without_pulling(applied, tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(applied), str(clone)], check=True)
    shown = json.loads(dvc_ok(clone, "metrics", "show", "--json"))
    test = next(iter(shown.values()))["data"]["metrics/evaluation.json"]["data"]
    assert "per_class.cat.recall" in test and "accuracy_ci95.high" in test
    assert not (clone / "models").exists()  # nothing was pulled


def test_a_temporary_experiment_records_into_the_projects_store(applied):
    result = dvc(applied, "exp", "run", "--temp", "-n", "stricter", "-S", "gate.min_accuracy=0.26")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_reused_every_attempt(result.stdout + result.stderr)
    versions = registry(applied).search_model_versions(f"name = '{MODEL}'")
    assert "stricter" in {v.tags.get("dvc_experiment") for v in versions}
    assert not list((applied / "mlruns").glob("**/.dvc"))  # nothing of the copy leaked
    diff = json.loads(dvc_ok(applied, "exp", "diff", "lenient", "stricter", "--json"))
    changed = diff["params"]["params.yaml"]["gate.min_accuracy"]
    assert (changed["old"], changed["new"]) == (0.25, 0.26)
    shown = json.loads(dvc_ok(applied, "exp", "show", "--json"))
    assert model_figures(experiment(shown, "stricter")) == workspace_figures(applied)


def test_queued_experiments_share_the_projects_cache_two_at_a_time(applied):
    for name, threshold in QUEUED.items():
        dvc_ok(applied, "exp", "run", "--queue", "-n", name, "-S", f"gate.min_accuracy={threshold}")
    dvc_ok(applied, "queue", "start", "-j", "2")
    deadline = time.monotonic() + 900
    while any(word in dvc_ok(applied, "queue", "status") for word in ("Queued", "Running")):
        assert time.monotonic() < deadline, dvc_ok(applied, "queue", "status")
        time.sleep(5)
    status = dvc_ok(applied, "queue", "status")
    shown = json.loads(dvc_ok(applied, "exp", "show", "--json"))
    versions = registry(applied).search_model_versions(f"name = '{MODEL}'")
    for name, threshold in QUEUED.items():
        log = dvc_ok(applied, "queue", "logs", name)
        assert f"{name}" in status and "Success" in status, status + log
        assert_reused_every_attempt(log)
        record = experiment(shown, name)
        assert record["data"]["params"]["params.yaml"]["data"]["gate"]["min_accuracy"] == threshold
        assert model_figures(record) == workspace_figures(applied)
        assert name in {v.tags.get("dvc_experiment") for v in versions}
    dvc_ok(applied, "queue", "stop")
    assert_cache_whole(applied / ".cache" / "image_finetune")


def test_plots_diff_of_two_experiments(applied, tmp_path):
    out = tmp_path / "plots"
    dvc_ok(applied, "plots", "diff", "lenient", "stricter", "-o", str(out))
    assert (out / "index.html").exists()


def test_exp_push_sends_the_experiment_to_git_and_its_outputs_to_s3(applied, services, tmp_path):
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    git(applied, "remote", "add", "origin", str(origin))
    prefix = f"experiments-{uuid.uuid4().hex[:8]}"
    # The remote is part of the project (committed): DVC reads an experiment's config from
    # its own commit.
    dvc_ok(applied, "remote", "add", "s3", f"s3://{services['S3_DVC_BUCKET']}/{prefix}")
    dvc_ok(applied, "remote", "modify", "s3", "endpointurl", services["S3_ENDPOINT_URL"])
    git(applied, "add", ".dvc/config")
    git(applied, "commit", "-qm", "the S3 remote")
    dvc_ok(applied, "exp", "run", "-n", "pushed", "-S", "gate.min_accuracy=0.28")
    dvc_ok(applied, "exp", "push", "-r", "s3", "origin", "pushed")
    refs = subprocess.run(
        ["git", "ls-remote", str(origin)], capture_output=True, text=True, check=True
    ).stdout
    assert any(line.endswith("/pushed") and "refs/exps/" in line for line in refs.splitlines())
    assert objects_under(services, prefix) > 0  # the experiment's outputs, in the bucket


@pytest.mark.parametrize("weights", ["none", "imagenet"])
def test_weights_that_are_not_a_file_keep_the_pipeline_whole(applied, weights):
    params = yaml.safe_load((applied / "params.yaml").read_text())
    params["model"]["weights"] = weights
    (applied / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        dvc_ok(applied, "repro", "-s", "locate-sources")
        record = json.loads((applied / "data" / "sources.json").read_text())
        assert record["weights"] == {"backbone": "mobilenet_v2", "weights": weights}
        status = dvc_ok(applied, "status", "train")  # no missing file: the stage would re-run
        assert "data/sources.json" in status
    finally:
        git(applied, "checkout", "params.yaml")
        dvc_ok(applied, "repro", "-s", "locate-sources")
