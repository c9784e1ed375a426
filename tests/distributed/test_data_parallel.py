"""Data-parallel training on this machine's CPU, as it runs on several GPUs or nodes: two
logical devices in one process (TensorFlow's MirroredStrategy, JAX's DataParallel) and two
worker processes on 127.0.0.1
(MultiWorkerMirroredStrategy from TF_CONFIG) give the same rungs as one device with the same
global batch, in each training mode; a worker killed mid-epoch resumes, with the others, from
the chief's last checkpoint; only the chief writes."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from image_finetune.config import Params
from tests.local_cluster import local_cluster
from tests.support import ROOT, SMALL_SPLIT, ingest_source, small_params

# Three rungs, one per training mode, warm-started in turn. No random augmentation and no
# dropout: the replicas draw other random numbers than one device does.
LADDER = [
    {"name": "head", "epochs": 2, "batch_size": 32, "learning_rate": 0.003},
    {
        "name": "tail",
        "unfreeze_from": "block_13_expand",
        "epochs": 2,
        "batch_size": 32,
        "learning_rate": 0.0005,
    },
    {
        "name": "whole",
        "unfreeze_from": "block_11_expand",
        "epochs": 1,
        "batch_size": 32,
        "learning_rate": 0.0001,
    },
]

RUN_LADDER = """
import logging
import sys
from pathlib import Path
from image_finetune.config import load_params
from image_finetune.steps.train_rung import train_rung
logging.basicConfig(level=logging.INFO)
params = load_params(sys.argv[1])
data, out = Path(sys.argv[2]), Path(sys.argv[3])
warm = None
for index in range(len(params.train.ladder)):
    result = train_rung(params, index, data, out / str(index), out / "cache", Path(sys.argv[4]),
                        warm)
    warm = Path(result.model_path)
    print("RESULT", index, result.mode, result.distribution, flush=True)
"""


def environment(backend: str = "tensorflow", **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": backend, **extra}


def write_params(
    folder: Path, weights: Path, distribution: str, ladder=LADDER, host_devices: int = 1
) -> Path:
    params = small_params(
        folder,
        weights,
        ladder,
        from_project=True,
        model={"image_size": 32, "dropout": 0.0},
        augment={"horizontal_flip": False, "translate": 0.0},
        train={"distribution": distribution, "host_devices": host_devices},
    )
    path = folder.parent / f"params-{distribution}-{os.getpid()}-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def dataset(small_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parallel") / "data"
    ingest_source(Params().data.model_copy(update=SMALL_SPLIT), small_folder, out)
    return out


def run_ladder(params: Path, data: Path, out: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUN_LADDER, str(params), str(data), str(out), str(ROOT)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finished(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def epochs(attempt: Path) -> list[dict]:
    with (attempt / "history.csv").open() as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def weights(attempt: Path) -> list[np.ndarray]:
    from image_finetune.inference import load_classifier

    return load_classifier(attempt / "model.keras").get_weights()


@pytest.fixture(scope="module")
def one_device(dataset, small_folder, no_top_weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one-device")
    params = write_params(small_folder, no_top_weights, "one_device")
    finished(run_ladder(params, dataset, out, environment()))
    return out


def assert_same_rungs(reference: Path, other: Path, exact: tuple[str, ...] = ("head",)) -> None:
    """Every rung's epochs and weights as on one device. The ``exact`` modes match to float
    precision; with TensorFlow, rungs that fine-tune the backbone match within a small
    tolerance, since Adam turns the replicas' other order of float sums into other steps."""
    for rung, mode in enumerate(("head", "tail", "end_to_end")):
        result = json.loads((other / str(rung) / "result.json").read_text())
        assert result["mode"] == mode and result["global_batch"] == 32
        strict = mode in exact
        for mine, theirs in zip(
            epochs(reference / str(rung)), epochs(other / str(rung)), strict=True
        ):
            assert theirs["loss"] == pytest.approx(mine["loss"], rel=1e-4 if strict else 0.05)
            assert theirs["val_accuracy"] == pytest.approx(
                mine["val_accuracy"], abs=1e-6 if strict else 0.1
            ), (rung, mine, theirs)
        for mine, theirs in zip(
            weights(reference / str(rung)), weights(other / str(rung)), strict=True
        ):
            drift = np.linalg.norm(theirs - mine) / (np.linalg.norm(mine) + 1e-6)
            assert drift <= (1e-4 if strict else 0.05), (rung, drift)


def test_two_devices_in_one_process_train_every_mode_as_one_device_does(
    dataset, small_folder, no_top_weights, one_device, tmp_path
):
    params = write_params(small_folder, no_top_weights, "mirrored", host_devices=2)
    output = finished(run_ladder(params, dataset, tmp_path, environment()))
    assert output.count("mirrored x2") >= 3, output[-3000:]
    assert_same_rungs(one_device, tmp_path)


def test_two_workers_train_every_mode_as_one_device_does_and_only_the_chief_writes(
    dataset, small_folder, no_top_weights, one_device, tmp_path
):
    params = write_params(small_folder, no_top_weights, "multi_worker")
    workers = [
        run_ladder(params, dataset, tmp_path, environment(TF_CONFIG=config))
        for config in local_cluster(2)
    ]
    chief, other = (finished(worker) for worker in workers)
    assert "multi_worker x2 (worker 0 of 2)" in chief
    assert "multi_worker x2 (worker 1 of 2)" in other
    assert other.count("the chief writes the attempt") == 3, other[-3000:]
    assert_same_rungs(one_device, tmp_path)
    assert not list((tmp_path / "cache").rglob(".*")), "no partial files left behind"


def test_two_jax_devices_train_every_mode_as_one_jax_device_does(
    dataset, small_folder, no_top_weights, tmp_path
):
    """keras.distribution.DataParallel over two CPU devices: each batch is sharded evenly."""
    for distribution, devices in (("one_device", 1), ("mirrored", 2)):
        params = write_params(small_folder, no_top_weights, distribution, host_devices=devices)
        finished(run_ladder(params, dataset, tmp_path / distribution, environment("jax")))
    shown = json.loads((tmp_path / "mirrored" / "2" / "result.json").read_text())
    assert (shown["backend"], shown["distribution"]) == ("jax", "mirrored x2")
    assert_same_rungs(
        tmp_path / "one_device", tmp_path / "mirrored", exact=("head", "tail", "end_to_end")
    )


KILLED_LADDER = [
    {
        "name": "tail",
        "unfreeze_from": "block_13_expand",
        "epochs": 6,
        "batch_size": 8,
        "learning_rate": 0.0003,
    }
]


def train_rung_command(params: Path, data: Path, out: Path, cache: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "image_finetune.cli",
        "train-rung",
        "--params",
        str(params),
        "--index",
        "0",
        "--data",
        str(data),
        "--out",
        str(out),
        "--cache",
        str(cache),
    ]


def start_workers(command: list[str], logs: Path) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            command,
            env=environment(TF_CONFIG=config),
            stdout=(logs / f"worker-{index}.log").open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for index, config in enumerate(local_cluster(2))
    ]


def chief_checkpoint(cache: Path, epochs_done: int, workers, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and all(w.poll() is None for w in workers):
        for metadata in (cache / "checkpoints").glob("*/training_metadata.json"):
            try:
                if json.loads(metadata.read_text()).get("epoch", -1) >= epochs_done:
                    return metadata.parent
            except ValueError:  # caught while being written
                continue
        time.sleep(0.1)
    raise AssertionError(f"the chief saved no checkpoint of {epochs_done} epochs")


def test_a_worker_killed_mid_epoch_resumes_with_the_others_from_the_last_checkpoint(
    dataset, small_folder, no_top_weights, tmp_path
):
    params = write_params(small_folder, no_top_weights, "multi_worker", ladder=KILLED_LADDER)
    command = train_rung_command(params, dataset, tmp_path / "attempt", tmp_path / "cache")
    workers = start_workers(command, tmp_path)
    chief_checkpoint(tmp_path / "cache", 2, workers)
    time.sleep(0.3)  # into the next epoch
    os.killpg(workers[1].pid, signal.SIGKILL)
    workers[1].wait()
    try:  # the chief cannot finish without its peer: it fails or waits for it
        workers[0].wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(workers[0].pid, signal.SIGKILL)
        workers[0].wait()
    assert not (tmp_path / "attempt" / "model.keras").exists()

    restarted = start_workers(command, tmp_path)
    for worker in restarted:
        assert worker.wait(timeout=600) == 0, (tmp_path / "worker-0.log").read_text()[-3000:]
    for index in range(2):
        log = (tmp_path / f"worker-{index}.log").read_text()
        assert "resuming from the checkpoint" in log, log[-3000:]
    done = [int(row["epoch"]) for row in epochs(tmp_path / "attempt")]
    assert done == list(range(6)), "every epoch once, none lost, none repeated"
    result = json.loads((tmp_path / "attempt" / "result.json").read_text())
    assert 1 <= result["epochs_run"] <= 4, "the restarted workers ran only what was left"
    assert result["distribution"] == "multi_worker x2 (worker 0 of 2)"
