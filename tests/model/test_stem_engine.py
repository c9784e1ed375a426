"""The feature cache's frozen parts on the fast engines: the features equal Keras's within
the documented tolerance, and two runs on one engine give bit-identical features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_finetune.config import ModelParams
from image_finetune.engines import FAST_ENGINES, engine_available
from image_finetune.training.features import default_stem_engine, rung_features
from image_finetune.training.model import build_backbone, build_classifier

BOUNDARY = "block_12_add"  # the default profile's cache boundary, at its 96 px
# Measured on 3,000 + 1,000 CIFAR-10 images (bench/stem_engine.py): features up to 30 in
# size differ from Keras's by at most 1.6e-4 on either engine (stem and pooled); the bound
# leaves room for other CPUs' kernels, and stays far below what moves a head.
MAX_ABS_DIFFERENCE = 1e-3


def images_of(folder: Path) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*/*.jpg"))]
    )


@pytest.fixture(scope="module")
def stem_inputs(small_folder, no_top_weights):
    """The default classifier (96 px, real ImageNet weights), 300 training and 100 test
    images (ten classes)."""
    params = ModelParams(weights=str(no_top_weights))
    classifier = build_classifier(build_backbone(params, 96, no_top_weights), 10, params, 32)
    train, held_out = images_of(small_folder / "train"), images_of(small_folder / "test")
    return classifier, train, held_out


def embed(stem_inputs, engine: str, cache: Path, mode: str = "tail"):
    """(train, None, held-out) features of a ``mode`` rung, cached in ``cache`` (a head rung
    in the folder of a tail rung embeds only the pool part: the stem's are there)."""
    classifier, train, held_out = stem_inputs
    return rung_features(classifier, mode, BOUNDARY, False, train, held_out, cache, engine)


@pytest.fixture(scope="module")
def first_runs(stem_inputs, tmp_path_factory) -> dict:
    """Each engine's first tail-rung run, made on demand (a test's cache folder by engine)."""
    runs: dict = {}

    def run(engine: str):
        if engine not in runs:
            folder = tmp_path_factory.mktemp(engine)
            runs[engine] = (embed(stem_inputs, engine, folder), folder)
        return runs[engine]

    return run


def assert_close(ours, reference) -> None:
    for a, b in zip(ours, reference, strict=True):
        if b is None:
            assert a is None
            continue
        assert a.shape == b.shape
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= MAX_ABS_DIFFERENCE


@pytest.mark.parametrize("engine", FAST_ENGINES)
def test_engine_features_equal_keras_within_the_tolerance(engine, first_runs):
    if not engine_available(engine):
        pytest.skip(f"{engine} is not installed")
    features, _ = first_runs(engine)
    assert_close(features, first_runs("tensorflow")[0])
    assert features[0].shape == (300, 6, 6, 96)  # the stem's output at the boundary, 96 px


def test_the_pool_part_on_an_engine_equals_keras_within_the_tolerance(stem_inputs, first_runs):
    """A head rung's pooled features: the rest of the backbone to the pool, on the engine."""
    engine = default_stem_engine()
    pooled = embed(stem_inputs, engine, first_runs(engine)[1], mode="head")
    assert pooled[0].shape == (300, 1280)
    assert_close(pooled, embed(stem_inputs, "tensorflow", first_runs("tensorflow")[1], "head"))


def test_two_runs_on_the_default_engine_give_identical_features(stem_inputs, first_runs, tmp_path):
    engine = default_stem_engine()
    first, folder = first_runs(engine)
    second = embed(stem_inputs, engine, tmp_path)  # converted again, as a second run does
    for name in ("train", "validation"):
        assert (folder / f"{name}.npy").read_bytes() == (tmp_path / f"{name}.npy").read_bytes()
    assert np.array_equal(first[0], second[0])
