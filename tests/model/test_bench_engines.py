"""bench/engines.py end to end in ``--quick`` mode (a tiny classifier built by the project's
builder, small batches, short loads): every part of the side-by-side benchmark runs and
writes its table, so the script cannot rot. Its figures are the benchmark's to print, not
asserted; what is asserted is that each part measured something, that the fp32 engines agree
with Keras, and that each server ran on the engine it was asked for."""

import json
import os
import subprocess
import sys

from image_finetune.engines import DEFAULT_ENGINE, ENGINES
from tests.support import ROOT

SCRIPT = ROOT / "bench" / "engines.py"


def test_quick_run_measures_every_part_and_writes_the_table(tmp_path, cifar_tarball):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
        ),
        "IMAGE_FINETUNE_SHARED": str(cifar_tarball.parents[1]),
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [written] = tmp_path.glob("engines-*-quick.json")
    report = json.loads(written.read_text())
    table = written.with_suffix(".md").read_text()

    assert set(report["machine"]["isa"]) >= {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}
    assert "CPU features: avx2" in table

    rows = {(r["engine"], r["precision"]): r for r in report["model_alone"]["rows"]}
    assert set(rows) == {
        ("tensorflow", "fp32"),
        ("onnxruntime", "fp32"),
        ("onnxruntime", "int8"),
        ("openvino", "fp32"),
        ("openvino", "int8"),
    }
    for row in rows.values():
        assert set(row["images_per_second"]) == {"1", "8"}
        assert min(row["images_per_second"].values()) > 0
    for engine in ("onnxruntime", "openvino"):
        assert rows[engine, "fp32"]["disagreements"] == 0
        assert rows[engine, "fp32"]["max_abs_difference"] < 1e-4
    assert "| openvino | int8 |" in table

    stem = {r["engine"]: r for r in report["embed"]["rows"]}
    assert set(stem) == set(ENGINES)
    assert max(r["max_abs_difference"] for r in stem.values()) < 1e-3

    servers = report["http"]["servers"]
    assert [(s["engine"], s["precision"]) for s in servers] == [
        ("tensorflow", "fp32"),
        (DEFAULT_ENGINE, "fp32"),
    ]
    for server in servers:
        assert server["cold_start_s"] > 0
        assert {r["payload"] for r in server["rows"]} == {
            "/predict, 1 JPEG",
            "/predict, 32 JPEGs",
            "OIP infer, 1 JPEG",
            "OIP infer, 32 JPEGs",
        }
        assert all(r["not_200"] == 0 and r["requests_per_second"] > 0 for r in server["rows"])
        # both ports probed while loaded: the application's and the probe process's
        assert all(r["healthz_p99_ms"] and r["probe_port_healthz_p99_ms"] for r in server["rows"])
    [cold] = report["cold_start"]["rows"]  # quick: one start each, behind an MLflow server
    assert cold["registry"] == "http" and cold["engine"] == DEFAULT_ENGINE
    assert cold["keras_median_s"] > 0 and cold["engine_median_s"] > 0
    assert "## Cold start" in table
    assert set(report["image_sizes"]) == {"full", "slim"}
