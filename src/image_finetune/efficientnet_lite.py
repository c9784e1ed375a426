"""EfficientNet-Lite0 from built-in Keras layers, with ImageNet weights from a PyTorch state
dict saved as ``.npz`` (``../shared/weights/efficientnet_lite0_imagenet_torch_layout.npz``).

Lite0 is EfficientNet-B0's block table without squeeze-and-excitation, ReLU6 everywhere, a
32-channel stem and a 1280-channel head. Only built-in layers: a saved classifier loads
without custom objects (MLflow pyfunc, TF Serving). Layer names follow MobileNetV2's
(``block_N_expand``, ``block_N_add``), so ``train.cache_boundary`` and a rung's
``unfreeze_from`` read the same way for both backbones. Input: 0-255 scaled to [-1, 1]
outside (the classifier's ``tf`` preprocessing).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

# (kernel, stride, expansion, output channels, repeats) per stage.
STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
STEM, HEAD, CLASSES = 32, 1280, 1000
EPSILON = 1e-3


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, activate: bool = True):
    x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(epsilon=EPSILON, name=f"{name}_BN")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if activate else x


def _block(x, index: int, kernel: int, stride: int, expansion: int, filters: int):
    """One MBConv block (no squeeze-and-excitation): expand, depthwise, project, add."""
    prefix = f"block_{index}"
    inputs, channels = x, x.shape[-1]
    if expansion != 1:
        x = _conv_bn(x, channels * expansion, 1, 1, f"{prefix}_expand")
    x = layers.DepthwiseConv2D(
        kernel, stride, padding="same", use_bias=False, name=f"{prefix}_depthwise"
    )(x)
    x = layers.BatchNormalization(epsilon=EPSILON, name=f"{prefix}_depthwise_BN")(x)
    x = layers.ReLU(6.0, name=f"{prefix}_depthwise_relu")(x)
    x = _conv_bn(x, filters, 1, 1, f"{prefix}_project", activate=False)
    if stride == 1 and channels == filters:
        x = layers.Add(name=f"{prefix}_add")([inputs, x])
    return x


def block_settings() -> list[tuple[int, int, int, int]]:
    """(kernel, stride, expansion, filters) of every block, in order."""
    return [
        (kernel, stride if repeat == 0 else 1, expansion, filters)
        for kernel, stride, expansion, filters, repeats in STAGES
        for repeat in range(repeats)
    ]


def EfficientNetLite0(
    include_top: bool = True,
    weights: str | None = None,  # noqa: N802
    input_shape: tuple[int, int, int] = (224, 224, 3),
) -> keras.Model:
    """The network, in keras.applications' calling convention. ``weights``: None (random)
    or the ``.npz`` file; Keras has no download of these weights ("imagenet" is refused)."""
    if weights is not None and not str(weights).endswith(".npz"):
        raise ValueError(
            "EfficientNet-Lite0 loads its ImageNet weights from the .npz file "
            "(model.weights: path); there is no download"
        )
    inputs = keras.Input(input_shape)
    x = _conv_bn(inputs, STEM, 3, 2, "Conv1")
    for index, setting in enumerate(block_settings()):
        x = _block(x, index, *setting)
    x = _conv_bn(x, HEAD, 1, 1, "Conv_1")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(CLASSES, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, x, name="efficientnet_lite0")
    if weights is not None:
        load_torch_weights(model, Path(weights))
    return model


def _torch_names() -> dict[str, tuple[str, str]]:
    """Our convolution layer -> the state dict's prefix of its conv and of its BatchNorm."""
    names = {"Conv1": ("_conv_stem", "_bn0"), "Conv_1": ("_conv_head", "_bn1")}
    for index, (_, _, expansion, _) in enumerate(block_settings()):
        torch = f"_blocks.{index}"
        if expansion != 1:
            names[f"block_{index}_expand"] = (f"{torch}._expand_conv", f"{torch}._bn0")
        names[f"block_{index}_depthwise"] = (f"{torch}._depthwise_conv", f"{torch}._bn1")
        names[f"block_{index}_project"] = (f"{torch}._project_conv", f"{torch}._bn2")
    return names


def load_torch_weights(model: keras.Model, path: Path) -> None:
    """Set every layer from the PyTorch-layout arrays: convolutions OIHW -> HWIO, depthwise
    (C,1,k,k) -> (k,k,C,1), Dense (out,in) -> (in,out). Every tensor must be used."""
    tensors = dict(np.load(path))
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        used.add(name)
        return tensors[name]

    for ours, (conv, bn) in _torch_names().items():
        kernel = take(f"{conv}.weight")
        depthwise = isinstance(model.get_layer(ours), layers.DepthwiseConv2D)
        model.get_layer(ours).set_weights(
            [kernel.transpose(2, 3, 0, 1) if depthwise else kernel.transpose(2, 3, 1, 0)]
        )
        model.get_layer(f"{ours}_BN").set_weights(
            [take(f"{bn}.{part}") for part in ("weight", "bias", "running_mean", "running_var")]
        )
    if any(layer.name == "predictions" for layer in model.layers):
        model.get_layer("predictions").set_weights([take("_fc.weight").T, take("_fc.bias")])
    else:
        used |= {"_fc.weight", "_fc.bias"}
    if unused := set(tensors) - used:
        raise ValueError(f"{path}: {len(unused)} tensors fit no layer (e.g. {min(unused)})")
