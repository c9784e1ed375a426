"""Choosing the replicas: TF_CONFIG read with clear errors, the distribution params ask for,
and the batch and learning rate each replica count gives a rung."""

import json

import pytest

from image_finetune.config import Rung, TrainParams
from image_finetune.errors import ConfigError
from image_finetune.training.distribute import (
    Cluster,
    Replicas,
    choose_distribution,
    read_cluster,
    refuse_workers,
    scaled_rung,
)
from tests.local_cluster import local_cluster


def tf_config(workers: int, index: int, kind: str = "worker", chief: bool = False) -> dict:
    cluster = {"worker": [f"10.0.0.{i}:2222" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["10.0.0.99:2222"]
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})}


def test_tf_config_names_the_worker_and_the_cluster_size():
    assert read_cluster({}) is None
    assert read_cluster(tf_config(3, 2)) == Cluster(workers=3, index=2)
    # A separate chief (the operator's Chief replica) is worker 0; the workers follow it.
    assert read_cluster(tf_config(2, 0, chief=True)) == Cluster(workers=3, index=1)
    assert read_cluster(tf_config(2, 0, "chief", chief=True)) == Cluster(workers=3, index=0)


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        '{"cluster": {}}',
        '["a"]',
        '{"cluster": {"worker": ["h:1"]}, "task": {"index": 0}}',
    ],
)
def test_a_malformed_tf_config_is_a_clear_config_error(raw):
    with pytest.raises(ConfigError, match="TF_CONFIG is not a valid cluster description"):
        read_cluster({"TF_CONFIG": raw})


@pytest.mark.parametrize("task", [("worker", 2), ("ps", 0), ("worker", -1)])
def test_a_task_outside_the_cluster_is_refused(task):
    with pytest.raises(ConfigError, match="is not one of the cluster's 2 workers"):
        read_cluster(tf_config(2, task[1], task[0]))


@pytest.mark.parametrize(
    ("setting", "cluster", "devices", "chosen"),
    [
        ("auto", None, 1, "one_device"),
        ("auto", None, 4, "mirrored"),
        ("auto", Cluster(2, 0), 1, "multi_worker"),
        ("auto", Cluster(1, 0), 2, "mirrored"),
        ("one_device", Cluster(2, 1), 8, "one_device"),
        ("mirrored", None, 1, "mirrored"),
    ],
)
def test_the_distribution_params_ask_for(setting, cluster, devices, chosen):
    assert choose_distribution(setting, cluster, devices) == chosen


def test_several_workers_without_tf_config_is_refused():
    with pytest.raises(ConfigError, match="multi_worker but TF_CONFIG is not set"):
        choose_distribution("multi_worker", None, 1)


RUNG = Rung(name="top", batch_size=128, learning_rate=0.001)


def test_a_global_batch_is_split_and_keeps_its_learning_rate():
    assert scaled_rung(RUNG, 4, "global") == RUNG
    with pytest.raises(ConfigError, match="batch_size 128 is smaller than the 256 replicas"):
        scaled_rung(RUNG, 256, "global")


def test_a_per_replica_batch_grows_the_global_batch_and_the_learning_rate_linearly():
    scaled = scaled_rung(RUNG, 4, "per_replica")
    assert (scaled.batch_size, scaled.learning_rate) == (512, pytest.approx(0.004))
    assert (
        scaled_rung(RUNG.model_copy(update={"learning_rate": 0.5}), 4, "per_replica").learning_rate
        == 1.0
    )  # capped where params cap it


def test_the_ladder_refuses_several_workers(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", tf_config(2, 0)["TF_CONFIG"])
    with pytest.raises(ConfigError, match="the ladder .* runs on one node"):
        refuse_workers(TrainParams(), "the ladder (train)")
    refuse_workers(TrainParams(distribution="mirrored"), "the ladder (train)")


def test_replicas_describe_the_cluster_and_only_worker_0_is_chief():
    worker = Replicas("multi_worker", 2, workers=2, worker=1)
    assert worker.layout == "multi_worker x2" and not worker.is_chief
    assert worker.describe() == "multi_worker x2 (worker 1 of 2)"
    assert Replicas("one_device", 1).describe() == "one_device x1"


def test_a_local_cluster_reads_back_as_its_workers_on_distinct_ports():
    configs = local_cluster(3)
    assert [read_cluster({"TF_CONFIG": c}) for c in configs] == [Cluster(3, i) for i in range(3)]
    addresses = json.loads(configs[0])["cluster"]["worker"]
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
