"""Where the data and weights come from: the local copies when they exist, the public
sources otherwise (the choice is logged), an explicit path as given; and the sources record
DVC re-runs ingest and train for."""

import json
import logging

import pytest

from image_finetune.config import DataParams, ModelParams, Params
from image_finetune.errors import MissingInputError
from image_finetune.locate import choose_data, choose_weights, local_path
from image_finetune.steps.locate_sources import locate_sources


@pytest.fixture
def project(tmp_path):
    """A project beside a ``shared`` folder holding the data and weights."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "cifar.tar.gz").write_bytes(b"images")
    (tmp_path / "shared" / "mobilenet.weights.h5").write_bytes(b"weights")
    (tmp_path / "project").mkdir()
    return tmp_path / "project"


def test_the_local_copies_are_chosen_when_they_exist(project, caplog):
    caplog.set_level(logging.INFO)
    data = choose_data(DataParams(path="../shared/cifar.tar.gz"), project, {})
    assert (data.source, data.path) == ("folder", str(project.parent / "shared/cifar.tar.gz"))
    model = choose_weights(ModelParams(weights_file="../shared/mobilenet.weights.h5"), project, {})
    assert model.weights == str(project.parent / "shared" / "mobilenet.weights.h5")
    assert "data: the local copy" in caplog.text and "weights: the local copy" in caplog.text


def test_without_local_copies_the_public_sources_are_chosen_and_said(project, caplog):
    data = choose_data(DataParams(path="../elsewhere/cifar.tar.gz"), project, {})
    assert data.source == "tfds" and data.tfds_name == "cifar10"
    model = choose_weights(ModelParams(weights_file="../elsewhere/w.h5"), project, {})
    assert model.weights == "imagenet"
    assert "using TensorFlow Datasets 'cifar10'" in caplog.text
    assert "using Keras' ImageNet weights for mobilenet_v2" in caplog.text


def test_an_explicit_path_is_never_replaced_by_a_download(project):
    data = choose_data(DataParams(source="folder", path="../elsewhere/x.tar.gz"), project, {})
    assert (data.source, data.path) == ("folder", str(project.parent / "elsewhere/x.tar.gz"))
    model = choose_weights(ModelParams(weights="../elsewhere/w.h5"), project, {})
    assert model.weights == str(project.parent / "elsewhere" / "w.h5")
    assert choose_weights(ModelParams(weights="None"), project, {}).weights == "none"


def test_a_backbone_without_a_download_keeps_its_missing_file(project):
    model = choose_weights(
        ModelParams(backbone="efficientnet_lite0", weights_file="x.npz"), project, {}
    )
    assert model.weights == str(project / "x.npz")


def test_an_experiments_temporary_copy_finds_the_repositorys_neighbours(project, tmp_path):
    copy = project / ".dvc" / "tmp" / "exps" / "tmp1234"
    copy.mkdir(parents=True)
    found = local_path("../shared/cifar.tar.gz", copy, {"DVC_ROOT": str(project)})
    assert found == project.parent / "shared" / "cifar.tar.gz"
    assert local_path("../shared/cifar.tar.gz", copy, {}) == copy.parent / "shared/cifar.tar.gz"


def test_the_sources_record_names_content_not_places(project, tmp_path):
    params = Params.model_validate(
        {
            "data": {"path": "../shared/cifar.tar.gz"},
            "model": {"weights_file": "../shared/mobilenet.weights.h5"},
        }
    )
    record = locate_sources(params, project, project / "data" / "sources.json")
    assert record == json.loads((project / "data" / "sources.json").read_text())
    assert record["data"]["source"] == "folder" and len(record["data"]["sha256"]) == 64
    assert record["weights"]["weights"] == "file"
    assert str(tmp_path) not in json.dumps(record)  # the same in every copy of the project
    (project.parent / "shared" / "cifar.tar.gz").write_bytes(b"other images")
    changed = locate_sources(params, project, project / "data" / "sources.json")
    assert changed["data"]["sha256"] != record["data"]["sha256"]


def test_the_sources_record_of_public_sources_and_a_missing_explicit_file(project):
    public = Params.model_validate(
        {"data": {"path": "nowhere"}, "model": {"weights_file": "nowhere"}}
    )
    record = locate_sources(public, project, project / "sources.json")
    assert record == {
        "data": {"source": "tfds", "name": "cifar10"},
        "weights": {"backbone": "mobilenet_v2", "weights": "imagenet"},
    }
    explicit = Params.model_validate({"data": {"source": "folder", "path": "nowhere"}})
    with pytest.raises(MissingInputError, match="nowhere: data source not found"):
        locate_sources(explicit, project, project / "sources.json")
