"""Backbone registry, classifier head and freezing.

The classifier takes uint8 images at the dataset's resolution; resizing and
the backbone's own preprocessing are layers inside the model, so serving
needs nothing but the model file. Backend-neutral Keras 3.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from image_finetune.config import IMAGENET, NAMED_WEIGHTS, Backbone, ModelParams
from image_finetune.efficientnet_lite import EfficientNetLite0
from image_finetune.errors import ConfigError, MissingInputError

log = logging.getLogger(__name__)

CLASSIFIER_INPUT = "image"
# The layers' names in a saved classifier. They are this module's alone: every other module
# reaches the parts through :class:`Classifier`. The softmax layer keeps the name ``logits``
# that every model saved so far carries (a warm start or a drift profile reads those).
HEAD, POOL, DROPOUT, SOFTMAX = "head", "pool", "dropout", "logits"
RESIZE, PREPROCESS, AUGMENTATION = "resize", "preprocess", "augmentation"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one keras.applications backbone and prepare its input."""

    build: Callable[..., keras.Model]
    preprocess: str  # "tf": [-1, 1]; "caffe": BGR minus ImageNet means; "none": raw 0-255


BACKBONES: dict[Backbone, BackboneSpec] = {  # one per config.Backbone (tested)
    "mobilenet_v2": BackboneSpec(keras.applications.MobileNetV2, "tf"),
    "resnet50": BackboneSpec(keras.applications.ResNet50, "caffe"),
    "efficientnet_b0": BackboneSpec(keras.applications.EfficientNetB0, "none"),
    # ImageNet weights from ../shared/weights/efficientnet_lite0_imagenet_torch_layout.npz
    "efficientnet_lite0": BackboneSpec(EfficientNetLite0, "tf"),
}

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def preprocess_layer(mode: str) -> keras.Layer:
    """A backbone's ``preprocess_input`` (0-255 floats in) from built-in layers only, so a
    saved model loads anywhere (MLflow pyfunc, TF Serving) without custom objects."""
    if mode == "tf":
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name=PREPROCESS)
    if mode == "caffe":
        # RGB -> BGR and mean subtraction are one fixed affine map on the channel axis.
        permutation = np.eye(3, dtype="float32")[::-1]
        return layers.Dense(
            3,
            trainable=False,
            name=PREPROCESS,
            kernel_initializer=keras.initializers.Constant(permutation.tolist()),
            bias_initializer=keras.initializers.Constant([-m for m in _CAFFE_MEAN_BGR]),
        )
    if mode == "none":
        return layers.Identity(name=PREPROCESS)
    raise ValueError(f"unknown preprocessing mode {mode!r}")


def build_backbone(params: ModelParams, image_size: int, weights_path: Path | None) -> keras.Model:
    """The named backbone without its top, weights loaded, BatchNorm kept in inference mode.

    ``weights_path`` is a local ``.weights.h5`` file, or None for ``params.weights``
    being ``imagenet`` (downloads) or ``none`` (random init).
    """
    spec = BACKBONES[params.backbone]
    choice = params.weights.lower()
    if weights_path is None and choice not in NAMED_WEIGHTS:
        raise ValueError(
            f"model.weights={params.weights!r} names no weights to load: "
            "decide them first (image_finetune.locate.choose_weights)"
        )
    if weights_path is not None and not weights_path.exists():
        raise MissingInputError(
            f"{weights_path}: backbone weights not found (set model.weights or "
            "$IMAGE_FINETUNE_WEIGHTS; use 'imagenet' to download or 'none')"
        )
    weights = str(weights_path) if weights_path else (IMAGENET if choice == IMAGENET else None)
    try:
        backbone = spec.build(
            include_top=False, weights=weights, input_shape=(image_size, image_size, 3)
        )
    except ValueError as exc:
        raise ConfigError(f"model.weights={params.weights!r} for {params.backbone}: {exc}") from exc
    except Exception as exc:  # Keras' download error is a bare Exception
        if weights != IMAGENET or "URL fetch failure" not in str(exc):
            raise
        raise MissingInputError(
            f"could not download the ImageNet weights of "
            f"{params.backbone} ({exc}); set model.weights_file to a local "
            "copy"
        ) from None
    # BN statistics (folded into the convolutions for some weight files) must never be updated:
    # a non-trainable BN layer runs in inference mode in Keras 3, even inside fit().
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    return backbone


@dataclass(frozen=True)
class Classifier:
    """A classifier and its parts: uint8 ``inputs`` -> (augmentation) -> ``resize`` (None at
    the backbone's own resolution) -> ``preprocess`` -> ``backbone`` -> ``head`` (``pool``,
    ``dropout``, ``softmax``) -> ``outputs``, the class probabilities."""

    model: keras.Model
    backbone: keras.Model
    resize: keras.Layer | None
    preprocess: keras.Layer
    head: keras.Sequential
    pool: keras.Layer
    dropout: keras.Layer
    softmax: keras.Layer

    @property
    def inputs(self):
        """The uint8 image input."""
        return self.model.inputs[0]

    @property
    def outputs(self):
        """The class probabilities."""
        return self.model.outputs[0]


def classifier_parts(model: keras.Model) -> Classifier:
    """The parts of a classifier that :func:`build_classifier` made (or one loaded from its
    saved file); a clear ValueError for any other model."""
    try:
        head = model.get_layer(HEAD)
        pool, dropout, softmax = (head.get_layer(name) for name in (POOL, DROPOUT, SOFTMAX))
        preprocess = model.get_layer(PREPROCESS)
    except ValueError as exc:
        raise ValueError(
            f"{model.name} has no {HEAD!r} with {POOL!r}, {DROPOUT!r} and "
            f"{SOFTMAX!r} layers: it was not built by build_classifier"
        ) from exc
    backbone = next(
        layer
        for layer in model.layers
        if isinstance(layer, keras.Model) and layer.name not in (HEAD, AUGMENTATION)
    )
    resize = next((layer for layer in model.layers if layer.name == RESIZE), None)
    return Classifier(model, backbone, resize, preprocess, head, pool, dropout, softmax)


def build_classifier(
    backbone: keras.Model,
    n_classes: int,
    params: ModelParams,
    input_size: int,
    augmentation: keras.Layer | None = None,
) -> Classifier:
    """uint8 [S,S,3] -> (augment) -> resize -> preprocess -> backbone -> head (softmax)."""
    spec = BACKBONES[params.backbone]
    image_size = backbone.input_shape[1]
    inputs = keras.Input((input_size, input_size, 3), dtype="uint8", name=CLASSIFIER_INPUT)
    x = layers.Rescaling(1.0, name="to_float")(inputs)
    if augmentation is not None:
        x = augmentation(x)
    resize = None
    if image_size != input_size:
        resize = layers.Resizing(image_size, image_size, interpolation="bilinear", name=RESIZE)
        x = resize(x)
    preprocess = preprocess_layer(spec.preprocess)
    x = preprocess(x)
    x = backbone(x, training=False)
    head = build_head(n_classes, params.dropout)
    outputs = head(x)
    model = keras.Model(inputs, outputs, name=f"{params.backbone}_classifier")
    pool, dropout, softmax = head.layers
    return Classifier(model, backbone, resize, preprocess, head, pool, dropout, softmax)


def build_head(n_classes: int, dropout: float) -> keras.Sequential:
    """Global average pooling, dropout and a softmax layer (float32 under mixed precision)."""
    return keras.Sequential(
        [
            layers.GlobalAveragePooling2D(name=POOL),
            layers.Dropout(dropout, name=DROPOUT),
            layers.Dense(n_classes, activation="softmax", dtype="float32", name=SOFTMAX),
        ],
        name=HEAD,
    )


def backbone_layer(backbone: keras.Model, name: str) -> keras.Layer:
    """A backbone layer by its name (a config names it: ``train.cache_boundary``), with a
    clear error listing valid block starts."""
    return backbone.layers[layer_index(backbone, name)]


def layer_index(backbone: keras.Model, name: str) -> int:
    """Position of a backbone layer, with a clear error listing valid block starts."""
    names = [layer.name for layer in backbone.layers]
    if name not in names:
        starts = [n for n in names if n.endswith(("_expand", "_add", "_out", "_1_conv"))][:12]
        raise ConfigError(
            f"layer {name!r} is not in {backbone.name}; candidates include {starts} ..."
        )
    return names.index(name)


def unfreeze_index(backbone: keras.Model, unfreeze_from: str | None) -> int:
    """Index of the first trainable backbone layer: None freezes all, ``all`` none."""
    if unfreeze_from is None:
        return len(backbone.layers)
    return 0 if unfreeze_from == "all" else layer_index(backbone, unfreeze_from)


def set_trainable(backbone: keras.Model, unfreeze_from: str | None) -> int:
    """Freeze the backbone below ``unfreeze_from`` (None: all of it); return trainable count.

    BatchNormalization layers stay frozen whatever the rung says.
    """
    start = unfreeze_index(backbone, unfreeze_from)
    backbone.trainable = True
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= start and not isinstance(layer, layers.BatchNormalization)
    return sum(int(ops.size(w)) for w in backbone.trainable_weights)
