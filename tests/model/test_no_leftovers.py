"""A pipeline step leaves nothing in the temp dir: not validation's Data Docs, not
training's scratch."""

import os
import subprocess
import sys

import yaml


def test_ingest_validate_and_train_leave_the_temp_dir_as_they_found_it(
    small_folder, no_top_weights, tmp_path
):
    temp = tmp_path / "tmp"
    temp.mkdir()
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "path": str(small_folder),
                    "validation_fraction": 0.2,
                    "min_validation_per_class": 1,
                },
                "model": {"weights": str(no_top_weights), "image_size": 32},
                "train": {
                    "cache_boundary": None,
                    "ladder": [{"name": "head", "epochs": 1, "batch_size": 64}],
                },
                "evaluate": {"bootstrap_samples": 100, "latency_runs": 2, "gallery_size": 0},
                "gate": {
                    "min_accuracy": 0.0,
                    "min_macro_f1": 0.0,
                    "min_class_recall": 0.0,
                    "max_latency_p95_ms": 100000,
                },
            }
        )
    )
    env = {**os.environ, "TMPDIR": str(temp), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cli = [sys.executable, "-m", "image_finetune.cli"]
    for step in (
        ["ingest", "--out", "data"],
        ["validate", "--data", "data", "--out", "checks"],
        [
            "train",
            "--data",
            "data",
            "--validation",
            "checks/result.json",
            "--out",
            "models",
            "--cache",
            "cache",
        ],
    ):
        result = subprocess.run(
            [*cli, step[0], "-p", str(params), *step[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in temp.iterdir()) == []
