"""Training behaviour on real data: seeded determinism, fine-tuning keeps accuracy,
and an interrupted attempt resumes from its last checkpoint."""

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

from image_finetune.config import Params, load_params
from image_finetune.steps.train_rung import train_rung
from tests.support import ROOT, SMALL_SPLIT, ingest_source, small_params


def write_small_params(tmp_path: Path, folder: Path, weights: Path, ladder: list[dict]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(
        yaml.safe_dump(small_params(folder, weights, ladder, train={"flip_cache": True}))
    )
    return path


@pytest.fixture(scope="module")
def small_data(small_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ingested") / "data"
    ingest_source(Params().data.model_copy(update=SMALL_SPLIT), small_folder, out)
    return out


LADDER = [
    {"name": "head", "epochs": 10, "batch_size": 32, "learning_rate": 0.003},
    {
        "name": "top",
        "unfreeze_from": "block_13_expand",
        "epochs": 1,
        "batch_size": 32,
        "learning_rate": 0.00005,
    },
]


def history(directory: Path) -> list[dict]:
    import csv

    with (directory / "history.csv").open() as handle:
        return list(csv.DictReader(handle))


TWO_RUNGS = """
import sys
from pathlib import Path
from image_finetune.config import load_params
from image_finetune.steps.train_rung import train_rung
params = load_params(sys.argv[1])
data, out, root = (Path(arg) for arg in sys.argv[2:5])
head = train_rung(params, 0, data, out / "0", out / "cache", root)
train_rung(params, 1, data, out / "1", out / "cache", root, Path(head.model_path))
"""


def weights(path: Path) -> list:
    from image_finetune.inference import load_classifier

    return load_classifier(path).get_weights()


def test_same_params_give_the_same_weights_in_another_process_and_fine_tuning_keeps_accuracy(
    small_data, small_folder, no_top_weights, tmp_path
):
    params_file = write_small_params(tmp_path, small_folder, no_top_weights, LADDER)
    params = load_params(params_file)
    head = train_rung(params, 0, small_data, tmp_path / "a" / "0", tmp_path / "a" / "cache", ROOT)
    top = train_rung(
        params,
        1,
        small_data,
        tmp_path / "a" / "1",
        tmp_path / "a" / "cache",
        ROOT,
        Path(head.model_path),
    )
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            TWO_RUNGS,
            str(params_file),
            str(small_data),
            str(tmp_path / "b"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert other.returncode == 0, other.stderr[-2000:]
    for rung in ("0", "1"):  # a fresh process, caches of its own: the same bits
        assert history(tmp_path / "a" / rung) == history(tmp_path / "b" / rung)
        mine, theirs = (weights(tmp_path / run / rung / "model.keras") for run in ("a", "b"))
        assert all(np.array_equal(x, y) for x, y in zip(mine, theirs, strict=True)), rung
    assert head.mode == "head" and top.mode == "tail"
    # BatchNorm in training mode would send accuracy to chance (0.1) after a fine-tuning epoch.
    assert head.best_val_accuracy > 0.3
    # 60 validation images: 0.1 is six of them, far above the fall to chance it catches.
    assert top.best_val_accuracy >= head.best_val_accuracy - 0.1


def test_interrupted_attempt_resumes_from_its_last_checkpoint(
    small_folder, no_top_weights, tmp_path
):
    ladder = [
        {
            "name": "top",
            "unfreeze_from": "block_13_expand",
            "epochs": 5,
            "batch_size": 16,
            "learning_rate": 0.0003,
        }
    ]
    params = write_small_params(tmp_path, small_folder, no_top_weights, ladder)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cli = [sys.executable, "-m", "image_finetune.cli"]
    for step in (["ingest", "--out", "data"], ["validate", "--data", "data", "--out", "checks"]):
        subprocess.run(
            [*cli, step[0], "-p", str(params), *step[1:]],
            cwd=tmp_path,
            env=env,
            check=True,
            capture_output=True,
        )
    train = [
        *cli,
        "train",
        "-p",
        str(params),
        "--data",
        "data",
        "--validation",
        "checks/result.json",
        "--out",
        "models",
        "--cache",
        "cache",
    ]
    first = subprocess.Popen(
        train,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    checkpoint = wait_for_checkpoint(tmp_path / "cache" / "checkpoints", first, epochs=2)
    os.killpg(first.pid, signal.SIGKILL)  # mid-epoch: no clean shutdown at all
    first.wait()
    assert not (tmp_path / "models" / "selected").exists()
    weights = checkpoint / "latest.weights.h5"  # a kill while it was written truncates it
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    second = subprocess.run(train, cwd=tmp_path, env=env, capture_output=True, text=True)
    output = second.stdout + second.stderr
    assert second.returncode in (0, 6), output[-3000:]  # 6: the gate, not the resume, failed
    assert "is corrupt; resuming from the one before it" in output
    assert "resuming from the checkpoint" in output
    assert "Epoch 1/5" not in output and "Epoch 5/5" in output
    epochs = [int(row["epoch"]) for row in history(tmp_path / "models" / "attempt_0")]
    assert epochs == list(range(5)), "every epoch once, none lost, none repeated"
    assert not checkpoint.exists(), "the checkpoint is deleted once the attempt finishes"


def wait_for_checkpoint(root: Path, process: subprocess.Popen, epochs: int) -> Path:
    """The checkpoint folder once it holds ``epochs`` epochs and the one before them."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        for metadata in root.glob("*/training_metadata.json"):
            try:
                done = json.loads(metadata.read_text()).get("epoch", -1)
            except ValueError:  # caught while being written
                continue
            if done >= epochs and metadata.with_name("latest.weights.h5.bkp").exists():
                return metadata.parent
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of {epochs} epochs")


ONE_RUNG = """
import logging
import sys
from pathlib import Path
from image_finetune.config import load_params
from image_finetune.steps.train_rung import train_rung
logging.basicConfig(level=logging.INFO)
data, out, cache = (Path(arg) for arg in sys.argv[2:5])
train_rung(load_params(sys.argv[1]), 0, data, out, cache, Path(sys.argv[5]))
"""


def test_two_runs_of_one_attempt_at_once_train_it_once_and_an_attempt_is_trusted_by_its_key(
    small_data, small_folder, no_top_weights, tmp_path, caplog
):
    """Two experiments sharing the cache need the same attempt: one embeds and trains, the
    other waits for it and reuses it. A finished attempt whose key.json names another key
    (copied, or half made by hand) is trained again, never reused."""
    params_file = write_small_params(
        tmp_path, small_folder, no_top_weights, [{**LADDER[0], "epochs": 2}]
    )
    cache = tmp_path / "cache"
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                ONE_RUNG,
                str(params_file),
                str(small_data),
                str(tmp_path / name),
                str(cache),
                str(ROOT),
            ],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        for name in ("a", "b")
    ]
    logs = [run.communicate(timeout=900)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(logs)[-4000:]
    assert sorted("reusing the finished attempt" in log for log in logs) == [False, True], logs
    assert sum("embed train" in log for log in logs) == 1, logs
    results = [json.loads((tmp_path / name / "result.json").read_text()) for name in "ab"]
    assert results[0]["best_val_accuracy"] == results[1]["best_val_accuracy"]
    [finished] = list((cache / "attempts").iterdir())
    (finished / "key.json").write_text(json.dumps({"key": "0" * 16}))
    with caplog.at_level("INFO"):
        train_rung(load_params(params_file), 0, small_data, tmp_path / "c", cache, ROOT)
    assert "reusing the finished attempt" not in caplog.text
    assert json.loads((finished / "key.json").read_text())["key"] == finished.name
