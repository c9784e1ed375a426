"""Backbones: real pretrained weights really load, every registered backbone builds,
and BatchNorm stays in inference mode while fine-tuning."""

import keras
import numpy as np
import pytest
from PIL import Image

from image_finetune.config import ModelParams
from image_finetune.training.features import split_backbone
from image_finetune.training.model import (
    BACKBONES,
    build_backbone,
    build_classifier,
    preprocess_layer,
    set_trainable,
)

SAMPLES = {
    "parrot.jpg": "macaw",
    "hot_dog.jpg": "hotdog",
    "bird.png": "chickadee",
    "dragonfly.png": "dragonfly",
    "cat.png": "Egyptian cat",
}


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "efficientnet_lite0"])
def test_full_top_weights_name_the_sample_photos(backbone, full_weights, lite0_weights):
    weights_dir = full_weights.parent
    # The file's first line is "background": Keras' 1000 classes start at line 2.
    labels = (weights_dir / "imagenet_labels.txt").read_text().splitlines()[1:]
    weights = {"mobilenet_v2": full_weights, "efficientnet_lite0": lite0_weights}[backbone]
    model = BACKBONES[backbone].build(
        weights=str(weights), include_top=True, input_shape=(224, 224, 3)
    )
    names = sorted(SAMPLES)
    photos = np.stack(
        [
            np.asarray(
                Image.open(weights_dir / "samples" / n).convert("RGB").resize((224, 224)),
                dtype="float32",
            )
            for n in names
        ]
    )
    preprocess = preprocess_layer(BACKBONES[backbone].preprocess)
    probs = np.asarray(model.predict_on_batch(preprocess(photos)))
    top1 = [labels[i].split(",")[0] for i in probs.argmax(axis=1)]
    assert top1 == [SAMPLES[n] for n in names]


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_each_backbone_builds_and_classifies_cifar_sized_input(backbone):
    params = ModelParams(backbone=backbone, weights="none", image_size=64)
    classifier = build_classifier(build_backbone(params, 64, None), 10, params, 32)
    model = classifier.model
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    probs = np.asarray(model.predict_on_batch(images))
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # Resized inside the model: the backbone sees 64x64, not CIFAR's 32x32.
    assert classifier.backbone.input_shape[1:3] == (64, 64)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    from image_finetune.errors import MissingInputError

    with pytest.raises(MissingInputError, match="backbone weights not found"):
        build_backbone(ModelParams(), 96, tmp_path / "absent.weights.h5")


def test_unknown_unfreeze_layer_is_a_clear_error(no_top_weights):
    from image_finetune.errors import ConfigError

    backbone = build_backbone(ModelParams(), 96, no_top_weights)
    with pytest.raises(ConfigError, match="'block_99_expand' is not in"):
        set_trainable(backbone, "block_99_expand")


def test_batchnorm_statistics_never_move_while_fine_tuning(no_top_weights):
    """With BN folded into the convolutions, BN in training mode collapses accuracy."""
    backbone = build_backbone(ModelParams(), 96, no_top_weights)
    set_trainable(backbone, "block_13_expand")
    batchnorms = [
        layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert batchnorms and not any(layer.trainable for layer in batchnorms)
    assert backbone.get_layer("block_13_expand").trainable
    assert not backbone.get_layer("block_12_expand").trainable
    _, tail = split_backbone(backbone, "block_12_add")
    before = [keras.ops.convert_to_numpy(bn.moving_mean) for bn in batchnorms[-5:]]
    inputs = keras.Input(tail.input_shape[1:])
    head = keras.layers.Dense(10, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(tail(inputs))
    )
    model = keras.Model(inputs, head)
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(
        rng.normal(size=(16, *tail.input_shape[1:])).astype("float32") * 3,
        rng.integers(0, 10, 16),
        epochs=1,
        verbose=0,
    )
    after = [keras.ops.convert_to_numpy(bn.moving_mean) for bn in batchnorms[-5:]]
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)


def test_stem_and_tail_compose_to_the_backbone(no_top_weights):
    backbone = build_backbone(ModelParams(), 96, no_top_weights)
    stem, tail = split_backbone(backbone, "block_12_add")
    x = np.random.default_rng(1).uniform(-1, 1, (2, 96, 96, 3)).astype("float32")
    np.testing.assert_allclose(
        tail.predict_on_batch(stem.predict_on_batch(x)), backbone.predict_on_batch(x), atol=1e-5
    )


def test_preprocess_layer_matches_keras_preprocess_input():
    x = np.random.default_rng(2).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    for name, module in (
        ("mobilenet_v2", keras.applications.mobilenet_v2),
        ("resnet50", keras.applications.resnet50),
        ("efficientnet_b0", keras.applications.efficientnet),
    ):
        expected = module.preprocess_input(x.copy())
        actual = keras.ops.convert_to_numpy(preprocess_layer(BACKBONES[name].preprocess)(x))
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)


def test_every_configurable_backbone_has_a_builder():
    from image_finetune import config
    from image_finetune.training.model import BACKBONES

    assert set(BACKBONES) == set(config.BACKBONES)
