"""Bring your own data: a folder of class folders without splits (as Keras and torchvision
read them), other classes, another image size, shape and format, through `dvc repro` with
the default recipe (test and validation held out by each file's content, adaptive rungs, the
solved head, centre crops) to a registered champion, served by its class names and cropped
there as in training."""

import io
import json
import tarfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from image_finetune.data.canonical import read_sources
from tests.e2e.serving_support import serve
from tests.e2e.test_dvc_repro import dvc, project_copy
from tests.support import ROOT

RENAMED = {"cat": "kitty", "ship": "boat", "frog": "toad"}
SIZE = 48
BORDER = 12  # noise on the left and right: the photos are 72x48, the subject in the centre
PER_CLASS = {"train": 60, "test": 20}  # taken from CIFAR-10's splits, put in one folder
HELD_OUT = 0.2  # of 80 images per class: about 16 to test and 16 to validation


def landscape(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The image at SIZE x SIZE between two bands of noise that a centre crop removes."""
    canvas = rng.integers(0, 256, (SIZE, SIZE + 2 * BORDER, 3), dtype=np.uint8)
    canvas[:, BORDER : BORDER + SIZE] = np.asarray(
        image.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    )
    return Image.fromarray(canvas)


def own_folder(tarball: Path, out: Path) -> Path:
    """Three CIFAR-10 classes under the user's names, as 72x48 PNGs in class folders
    (``out/<class>/<image>.png``), no split folders."""
    rng = np.random.default_rng(0)
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(tarball) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or parts[1] not in RENAMED:
                continue
            split, name = parts[0], RENAMED[parts[1]]
            if taken.get((split, name), 0) >= PER_CLASS[split]:
                continue
            taken[(split, name)] = taken.get((split, name), 0) + 1
            image = Image.open(archive.extractfile(member)).convert("RGB")
            target = out / name / f"{split}-{Path(parts[2]).stem}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            landscape(image, rng).save(target)
    return out


@pytest.fixture(scope="module")
def own_project(cifar_tarball, no_top_weights, tmp_path_factory):
    folder = own_folder(cifar_tarball, tmp_path_factory.mktemp("pond"))
    project = project_copy(tmp_path_factory.mktemp("project"), folder, no_top_weights, {})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())  # the default recipe
    params["data"].update(
        path=str(folder),
        image_size=SIZE,
        on_wrong_size="center_crop",
        test_fraction=HELD_OUT,
        validation_fraction=HELD_OUT,
    )
    # The backbone at 64 px rather than the default 112 keeps the test short; the rest is
    # the default recipe.
    params["model"].update(weights=str(no_top_weights), image_size=64)
    params["evaluate"].update(bootstrap_samples=200, latency_runs=5, gallery_size=12)
    params["gate"].update(
        min_accuracy=0.6, min_macro_f1=0.6, min_class_recall=0.3, max_latency_p95_ms=2000
    )
    params["registry"]["model_name"] = "pond-classifier"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = dvc(project, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return project, folder, result


def test_the_recipe_adapts_to_a_small_dataset_of_other_classes_and_size(own_project):
    project, _, result = own_project
    manifest = json.loads((project / "data" / "ingested" / "manifest.json").read_text())
    assert manifest["class_names"] == ["boat", "kitty", "toad"]
    assert manifest["test_holdout"] == manifest["validation_holdout"] == "content-hash"
    splits = manifest["splits"]
    for name in manifest["class_names"]:
        counts = [splits[split]["per_class"][name] for split in ("train", "validation", "test")]
        assert sum(counts) == 80 and min(counts[1:]) >= 8, (name, counts)
    assert np.load(project / "data" / "ingested" / "train_images.npy", mmap_mode="r").shape[1:] == (
        SIZE,
        SIZE,
        3,
    )
    log = result.stdout + result.stderr
    assert "head solved by L-BFGS" in log
    summary = json.loads((project / "models" / "summary.json").read_text())
    assert summary["attempts"][0]["passed"]
    evaluation = project / "reports" / "evaluation"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.6  # chance is 0.33
    details = json.loads((evaluation / "details.json").read_text())
    assert set(details["per_class"]) == {"boat", "kitty", "toad"}
    assert "kitty" in (evaluation / "report.html").read_text()
    decision = json.loads((project / "models" / "attempt_0" / "decision.json").read_text())
    assert any("95% CI" in reason for reason in decision["reasons"])


def test_the_champion_is_served_by_the_users_class_names(own_project, tmp_path):
    project, folder, _ = own_project
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "IMAGE_FINETUNE_MODEL_NAME": "pond-classifier",
    }
    server = serve(env, [], tmp_path)
    try:
        files = [folder / name for name in read_sources(project / "data" / "ingested", "test")]
        response = httpx.post(
            f"{server.url}/predict",
            timeout=60,
            files=[("files", (f.name, f.read_bytes(), "image/png")) for f in files[:30]],
        )
        assert response.status_code == 200, response.text
        labels = [p["top_k"][0]["class"] for p in response.json()["predictions"]]
        assert set(labels) <= {"boat", "kitty", "toad"}
        right = sum(label == f.parent.name for label, f in zip(labels, files, strict=False))
        assert right / len(labels) > 0.6
        metadata = httpx.get(f"{server.url}/metadata", timeout=30).json()
        assert metadata["image_fit"] == "center_crop"
        assert metadata["input_shape"] == [SIZE, SIZE, 3]
        buffer = io.BytesIO()  # another size again: cropped as in training
        Image.open(files[0]).resize((144, 96)).save(buffer, format="PNG")
        other = httpx.post(
            f"{server.url}/predict",
            content=buffer.getvalue(),
            headers={"content-type": "image/png"},
            timeout=30,
        )
        assert other.status_code == 200
        assert other.json()["predictions"][0]["top_k"][0]["class"] in {"boat", "kitty", "toad"}
    finally:
        server.stop()
