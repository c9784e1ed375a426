"""What ties a registered version to its code (the commit under MLflow's standard tag, the DVC
experiment a stage runs in), and where an experiment's local store is."""

import os

from image_finetune.registry.client import local_artifact_root, mlflow_store, store_uri
from image_finetune.registry.lineage import GIT_COMMIT_TAG, dvc_experiment, lineage_tags


def test_a_dvc_experiments_stage_knows_its_name_and_base_commit():
    environ = {"DVC_EXP_NAME": "rapt-hymn", "DVC_EXP_BASELINE_REV": "abc123", "HOME": "/root"}
    assert dvc_experiment(environ) == {
        "dvc_experiment": "rapt-hymn",
        "dvc_experiment_baseline": "abc123",
    }
    assert dvc_experiment({"HOME": "/root"}) == {}  # dvc repro, the CLI, Kubeflow
    assert dvc_experiment({"DVC_EXP_NAME": ""}) == {}


def test_the_commit_is_under_mlflows_standard_tag_too():
    tags = lineage_tags("run-1", "p" * 64, "d" * 64, ["cat"], {"git_commit": "abc123"}, "resize")
    assert tags[GIT_COMMIT_TAG] == tags["git_commit"] == "abc123"
    assert GIT_COMMIT_TAG not in lineage_tags("run-1", "p", "d", ["cat"], {}, "resize")


def test_an_experiment_in_a_temporary_copy_records_into_the_projects_store():
    environ = {"DVC_ROOT": "/work/project"}
    assert store_uri("sqlite:///mlflow.db", environ) == "sqlite:////work/project/mlflow.db"
    assert store_uri("sqlite:////abs/mlflow.db", environ) == "sqlite:////abs/mlflow.db"
    assert store_uri("http://mlflow:5000", environ) == "http://mlflow:5000"
    assert store_uri("sqlite:///mlflow.db", {}) == "sqlite:///mlflow.db"  # not a DVC stage


def test_a_local_stores_artifacts_go_beside_its_database():
    assert local_artifact_root("sqlite:////work/project/mlflow.db") == "file:///work/project/mlruns"
    assert local_artifact_root("https://mlflow.example.com") is None


def test_the_fluent_store_is_set_for_the_block_and_put_back(monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://registry.example.com")
    with mlflow_store("sqlite:///mlflow.db"):
        assert mlflow.get_tracking_uri() == "sqlite:///mlflow.db"
        assert mlflow.get_registry_uri() == "sqlite:///mlflow.db"
    assert "MLFLOW_TRACKING_URI" not in os.environ  # load_params would read it
    assert os.environ["MLFLOW_REGISTRY_URI"] == "http://registry.example.com"
    assert mlflow.get_registry_uri() == "http://registry.example.com"
