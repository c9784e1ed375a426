"""The monitor step on a small real model registered with its reference profile (a local
MLflow store): clean real CIFAR-10 test images raise no alarm, the same images with
Gaussian noise do; the report is written; bad requests fail clearly."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from bench.corruptions import gaussian_noise
from PIL import Image
from typer.testing import CliRunner

from image_finetune.cli import app
from image_finetune.config import RegistryParams
from image_finetune.errors import IngestError, MissingInputError
from image_finetune.registry.client import RegistryError, client_for
from image_finetune.registry.versions import download_reference_profile
from image_finetune.steps.evaluate import evaluate_classifier
from image_finetune.steps.final_gate import final_gate
from image_finetune.steps.monitor import MonitorSettings, monitor
from image_finetune.steps.profile import profile_classifier
from image_finetune.steps.register import register_classifier
from tests.support import CIFAR_TARBALL, ROOT

UNSEEN_PER_CLASS = 30  # test images per class after the 10 the small model's data holds


def unseen_test_images(tarball: Path, skip: int, count: int) -> list[np.ndarray]:
    """Real CIFAR-10 test images the small dataset does not hold: per class, after ``skip``."""
    taken: dict[str, int] = {}
    images = []
    with tarfile.open(tarball) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or parts[0] != "test":
                continue
            seen = taken[parts[1]] = taken.get(parts[1], 0) + 1
            if skip < seen <= skip + count:
                images.append(np.asarray(Image.open(archive.extractfile(member)).convert("RGB")))
    return images


def write_folder(images, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:04d}.png")
    return folder


@pytest.fixture(scope="module")
def registered(small_model, cifar_tarball, tmp_path_factory) -> dict:
    """The session's small model registered twice in a local store: v1 with its reference
    profile, v2 without one (as versions registered before profiles existed)."""
    work = tmp_path_factory.mktemp("monitor")
    params = small_model["params"].model_copy(
        update={
            "registry": RegistryParams(
                tracking_uri=f"sqlite:///{work}/mlflow.db", model_name="monitored"
            )
        }
    )
    data, model = small_model["data"], small_model["model"]
    profile_classifier(params, data, model, work / "profile")
    evaluate_classifier(params, data, model, work / "evaluation", "test")
    final_gate(params, work / "evaluation", work / "gate.json")
    for run, profile in (("with-profile", work / "profile"), ("without-profile", None)):
        register_classifier(
            params,
            data,
            work / "evaluation",
            work / "gate.json",
            work / f"{run}.json",
            ROOT,
            model=model,
            profile=profile,
            pipeline_run_id=run,
        )
    images = unseen_test_images(cifar_tarball, 10, UNSEEN_PER_CLASS)
    noisy = gaussian_noise(np.stack(images), 3, np.random.default_rng(0))
    clean = write_folder(images, work / "clean")
    corrupted = work / "noisy.tar.gz"  # an archive: the other way images arrive
    with tarfile.open(corrupted, "w:gz") as archive:
        archive.add(write_folder(list(noisy), work / "noisy"), arcname="noisy")
    return {"params": params, "work": work, "clean": clean, "noisy": corrupted}


def test_the_profile_is_registered_with_its_version(registered, tmp_path):
    params = registered["params"]
    client = client_for(params.registry)
    folder = download_reference_profile(client, "monitored", "1", tmp_path / "p")
    meta = json.loads((folder / "profile.json").read_text())
    assert meta["model_version"] == "1" and meta["dimensions"] >= 2
    assert download_reference_profile(client, "monitored", "2", tmp_path / "q") is None


def test_clean_images_raise_no_alarm(registered):
    report = monitor(
        registered["params"],
        registered["clean"],
        registered["work"] / "clean-out",
        ROOT,
        MonitorSettings(version="1", permutations=200),
    )
    assert report["drift"] is False, report["tests"]
    assert report["window_size"] == 10 * UNSEEN_PER_CLASS and report["unreadable"] == []
    page = (registered["work"] / "clean-out" / "drift.html").read_text()
    assert page.count("data:image/png;base64,") == 9  # a picture per test and the samples


def test_noisy_images_are_drift(registered):
    out = registered["work"] / "noisy-out"
    report = monitor(
        registered["params"],
        registered["noisy"],
        out,
        ROOT,
        MonitorSettings(version="1", permutations=200),
    )
    assert report["drift"] is True
    assert report["tests"]["sharpness"]["drift"]
    assert json.loads((out / "drift.json").read_text())["drift"] is True
    assert report["retrain"] == {"wanted": True, "reasons": ["drift"], "ran": False}


def test_enough_labels_start_the_pipeline_with_them(registered, tmp_path):
    labels = tmp_path / "export"
    (labels / "cat").mkdir(parents=True)
    for index, image in enumerate(unseen_test_images(CIFAR_TARBALL, 50, 1)[:3]):
        Image.fromarray(image).save(labels / "cat" / f"{index}.png")
    not_a_project = tmp_path / "elsewhere"
    not_a_project.mkdir()
    report = monitor(
        registered["params"],
        registered["clean"],
        tmp_path / "out",
        not_a_project,
        MonitorSettings(version="1", permutations=200, labels=labels, min_labels=3, retrain=True),
    )
    retrain = report["retrain"]
    assert report["labels"] == 3 and retrain["wanted"] and retrain["ran"]
    assert retrain["reasons"][-1] == "3 new labelled images (>= 3)"
    assert retrain["command"][:3] == ["dvc", "exp", "run"]
    assert retrain["command"][-1] == f'++data.extra_paths=["{labels.resolve()}"]'
    assert retrain["exit_code"] != 0  # no DVC project there: the failure is reported
    assert json.loads((tmp_path / "out" / "drift.json").read_text())["retrain"] == retrain


def test_recorded_windows_are_tested_like_images(registered, tmp_path):
    from image_finetune.monitoring.profile import ReferenceProfile

    client = client_for(registered["params"].registry)
    profile = ReferenceProfile.load(
        download_reference_profile(client, "monitored", "1", tmp_path / "p")
    )
    recorded = tmp_path / "windows.npz"
    np.savez(
        recorded,
        probabilities=profile.probabilities,
        projected=profile.projected,
        image_stats=profile.image_stats,
    )
    report = monitor(
        registered["params"],
        recorded,
        tmp_path / "out",
        ROOT,
        MonitorSettings(alias="champion", permutations=200),
    )
    assert report["drift"] is False and report["window_size"] == len(profile)
    np.savez(
        recorded,
        probabilities=profile.probabilities,
        projected=profile.projected[:, :1],
        image_stats=profile.image_stats,
    )
    with pytest.raises(IngestError, match="dimensions"):
        monitor(registered["params"], recorded, tmp_path / "out", ROOT)


def test_bad_requests_fail_clearly(registered, tmp_path):
    params = registered["params"]
    with pytest.raises(MissingInputError, match="no reference profile"):
        monitor(params, registered["clean"], tmp_path, ROOT, MonitorSettings(version="2"))
    with pytest.raises(RegistryError):
        monitor(params, registered["clean"], tmp_path, ROOT, MonitorSettings(version="99"))
    with pytest.raises(RegistryError, match="no version with alias 'nobody'"):
        monitor(params, registered["clean"], tmp_path, ROOT, MonitorSettings(alias="nobody"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no readable images"):
        monitor(params, tmp_path / "empty", tmp_path, ROOT, MonitorSettings(version="1"))


def test_the_command_reports_drift_and_errors_by_exit_code(registered, tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps(registered["params"].model_dump(mode="json", by_alias=True)))
    runner = CliRunner()
    found = runner.invoke(
        app,
        [
            "monitor",
            str(registered["noisy"]),
            "--version",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--params",
            str(params_file),
        ],
    )
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["drift"] is True
    refused = runner.invoke(
        app, ["monitor", str(registered["clean"]), "--version", "2", "--params", str(params_file)]
    )
    assert refused.exit_code == MissingInputError.exit_code
    assert "no reference profile" in refused.output and "Traceback" not in refused.output
