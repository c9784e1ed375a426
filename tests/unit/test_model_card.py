"""The model card (image_finetune.model_card) and the logged requirements' markers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from image_finetune.model_card import CardFacts, card_description, card_html, card_markdown
from image_finetune.registry.versions import portable_tensorflow, serving_requirements

CLASSES = ["cat", "dog", "<script>alert(1)</script>"]


def facts(engine: dict | None = None, attempts: list[dict] | None = None) -> CardFacts:
    per_class = {
        name: {"precision": 0.8, "recall": recall, "f1": 0.7, "support": 10}
        for name, recall in zip(CLASSES, (0.9, 0.55, 0.8), strict=True)
    }
    return CardFacts(
        model_name="cifar10-classifier",
        version="7",
        backbone="mobilenet_v2",
        class_names=CLASSES,
        image_fit="resize",
        manifest={
            "image_shape": [32, 32, 3],
            "source": {"kind": "folder", "name": "cifar10-jpeg.tar.gz", "sha256": "ab" * 32},
            "splits": {
                "train": {
                    "count": 60,
                    "images_sha256": "1" * 64,
                    "per_class": {"cat": 19, "dog": 20, "x": 21},
                },
                "test": {
                    "count": 30,
                    "images_sha256": "2" * 64,
                    "per_class": {"cat": 10, "dog": 10, "x": 10},
                },
            },
        },
        manifest_sha256="f" * 64,
        test={
            "count": 30,
            "accuracy": 0.8123,
            "accuracy_ci95": [0.7511, 0.8702],
            "macro_f1": 0.8,
            "min_class_recall": 0.55,
            "ece": 0.0612,
            "per_class": per_class,
            "most_confused": [{"true": "dog", "predicted": "cat", "count": 4}],
            "latency": {"batch1_p50_ms": 9.5, "batch1_p95_ms": 12.2},
            "model_size_mb": 9.69,
        },
        decision={"passed": True, "reasons": ["ok accuracy: 0.8123 (required >= 0.5)"]},
        attempts=attempts
        if attempts is not None
        else [
            {
                "index": 0,
                "rung": "frozen-head",
                "passed": False,
                "val_accuracy": 0.746,
                "val_macro_f1": 0.745,
                "failures": ["FAIL accuracy: 0.746 (required >= 0.85)"],
            },
            {
                "index": 1,
                "rung": "top-blocks",
                "passed": True,
                "val_accuracy": 0.882,
                "val_macro_f1": 0.881,
                "failures": [],
            },
        ],
        engine=engine,
        lineage={"pipeline_run_id": "run-1", "git_commit": "abc123"},
    )


def test_the_markdown_card_says_what_the_data_loop_and_test_results_were():
    text = card_markdown(facts(), {"Confusion matrix (test)": "evaluation/confusion_matrix.png"})
    assert "# cifar10-classifier v7: model card" in text
    assert "0.8123 (95% CI 0.7511–0.8702) on 30 test images" in text
    assert "f" * 64 in text and "cifar10-jpeg.tar.gz" in text  # the manifest's digest
    assert "| train | 60 | 19–21 | `" + "1" * 16 + "` |" in text
    assert re.search(r"\| 0 \| `frozen-head` \| 0\.746 \| .* \| failed \| FAIL accuracy", text)
    assert "| 1 | `top-blocks` | 0.882 | 0.881 | passed | — |" in text
    assert "| dog | 0.8 | 0.55 | 0.7 | 10 |" in text  # per-class recall
    assert "expected calibration error (ECE) 0.0612" in text
    assert "Weakest class: dog (recall 0.55)" in text and "reads dog as cat" in text
    assert "batch1 p95 ms | 12.2" in text
    assert "![Confusion matrix (test)](evaluation/confusion_matrix.png)" in text
    assert "Serving engine" not in text  # no engine.json: no engine section


def test_the_engine_figures_appear_when_the_evaluation_has_them():
    engine = {
        "default_engine": "openvino",
        "serving_precision": "int8",
        "agreement": 0.997,
        "int8": {"accuracy_drop": 0.002, "mcnemar_p": 0.41},
    }
    text = card_markdown(facts(engine))
    assert "| default_engine | openvino |" in text and "| serving_precision | int8 |" in text
    assert "| agreement | 0.997 |" in text
    assert "| int8 | accuracy_drop 0.002; mcnemar_p 0.41 |" in text


def test_the_html_card_is_self_contained_and_escapes_what_it_shows():
    page = card_html(facts(), {"Confusion matrix (test)": b"\x89PNG fake bytes"})
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "src='data:image/png;base64,iVBORyBmYWtlIGJ5dGVz'" in page
    assert not re.search(r"(src|href)=['\"](https?:|//|/)", page)  # nothing fetched
    assert "<strong>0.8123 (95% CI 0.7511–0.8702) on 30 test images</strong>" in page
    assert "<td><code>top-blocks</code></td>" in page


def test_the_description_is_short_and_names_the_loop_and_the_data():
    description = card_description(facts())
    assert len(description) < 1000 and description.count("\n") < 8
    assert "2 attempt(s), rung `top-blocks` passed" in description
    assert "`" + "f" * 16 + "`" in description and "0.8123 (95% CI" in description
    assert "attempts not recorded" in card_description(facts(attempts=[]))


MAC_ARM = {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"}
LINUX_GPU = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
LINUX_ARM = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64"}
WINDOWS = {"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64"}


def tensorflow_for(lines: list[str], environment: dict) -> list[str]:
    """The TensorFlow requirements that apply in ``environment``, as name==version."""
    found = []
    for line in lines:
        requirement = Requirement(line)
        if requirement.name.startswith("tensorflow") and (
            requirement.marker is None or requirement.marker.evaluate(environment)
        ):
            found.append(f"{requirement.name}{requirement.specifier}")
    return found


def check_portable(lines: list[str]) -> None:
    """Exactly one TensorFlow line applies anywhere; the CPU-only build on Linux x86_64
    only (it has no wheels elsewhere)."""
    release = next(Requirement(r).specifier for r in lines if r.startswith("tensorflow"))
    assert tensorflow_for(lines, LINUX_GPU) == [f"tensorflow-cpu{release}"]
    for other in (MAC_ARM, LINUX_ARM, WINDOWS):
        assert tensorflow_for(lines, other) == [f"tensorflow{release}"], other


def test_tensorflow_is_pinned_for_every_platform():
    check_portable(portable_tensorflow("2.21.0"))


def test_the_serving_requirements_install_on_a_mac_and_a_gpu_host():
    requirements = serving_requirements()
    assert all(Requirement(line) for line in requirements)  # each line parses
    check_portable(requirements)


def test_an_unmarked_cpu_pin_would_be_caught():
    with pytest.raises(AssertionError):
        check_portable(["tensorflow-cpu==2.21.0"])


@pytest.mark.parametrize(
    ("environment", "config"),
    [
        ({}, None),
        ({"KERAS_BACKEND": "jax"}, None),
        ({}, {"backend": "torch"}),
        ({"KERAS_BACKEND": "jax"}, {"backend": "torch"}),
        ({}, {"floatx": "float32"}),
    ],
)
def test_the_keras_backend_is_read_as_keras_reads_it_without_importing_keras(
    environment, config, tmp_path
):
    """Where Keras is not loaded the backend is found without it (no TensorFlow start), and
    it is the one Keras itself picks in the same environment."""
    home = tmp_path / "keras-home"
    home.mkdir()
    if config is not None:
        (home / "keras.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(KERAS_HOME=str(home), **environment)
    ours = (
        "import sys; from image_finetune.registry.versions import keras_backend; "
        "print(keras_backend(), 'keras' in sys.modules)"
    )
    theirs = "import keras; print(keras.backend.backend())"
    found = subprocess.run([sys.executable, "-c", ours], env=env, capture_output=True, text=True)
    expected = {"jax": "jax", "torch": "torch"}.get(
        environment.get("KERAS_BACKEND") or (config or {}).get("backend"), "tensorflow"
    )
    assert found.stdout.split() == [expected, "False"], found.stderr
    if config == {"floatx": "float32"}:  # Keras agrees (a start of seconds: one case)
        keras = subprocess.run(
            [sys.executable, "-c", theirs], env=env, capture_output=True, text=True
        )
        assert keras.stdout.split()[-1] == expected, keras.stderr
