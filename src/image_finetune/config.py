"""params.yaml -> typed, validated configuration.

Every step reads its own section. Unknown keys, wrong types and out-of-range
values fail before any work starts, with the key path and the reason.
Environment variables override the locations that differ between machines:

- ``IMAGE_FINETUNE_DATA``: the dataset source path (``data.path``)
- ``IMAGE_FINETUNE_WEIGHTS``: the backbone weights (``model.weights``)
- ``MLFLOW_TRACKING_URI``: the tracking server (``registry.tracking_uri``)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from image_finetune.errors import ConfigError

DATA_ENV = "IMAGE_FINETUNE_DATA"
WEIGHTS_ENV = "IMAGE_FINETUNE_WEIGHTS"
TRACKING_ENV = "MLFLOW_TRACKING_URI"

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[int, Field(gt=0)]
# What NumPy's and Keras' random generators take: a seed outside fails deep in a step.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# No float param means anything infinite or NaN (``.inf`` is valid YAML): refused everywhere.
STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Section(BaseModel):
    model_config = STRICT


class DataParams(_Section):
    """Where the images come from and how the splits are made (``ingest``)."""

    # auto: the folder or tarball at ``path`` when it exists (a .csv or .jsonl file there:
    # labels), else tfds (image_finetune.locate). folder: split/class/image or class/image;
    # labels: a labels file (path,label[,split]) (image_finetune.data.layouts)
    source: Literal["auto", "folder", "labels", "cifar-python", "cifar-binary", "tfds"] = "auto"
    path: str = "../shared/data/cifar10-jpeg.tar.gz"
    tfds_name: str = "cifar10"
    image_size: Positive = 32
    on_wrong_size: Literal["reject", "resize", "center_crop"] = "reject"
    validation_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    min_validation_per_class: Positive = 20
    # A source without splits (class folders, a labels file without a split column): the
    # fraction of each class held out as test, by each file's content (data.stable_split);
    # a class with fewer test images than the minimum is a loud warning. A source with a
    # test split (the default) ignores both.
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    min_test_per_class: Positive = 20
    max_per_class: Positive | None = None
    seed: Seed = 42
    # Image-folder trees of extra labelled images (``class/file`` or ``split/class/file``,
    # what ``feedback export`` writes), all added to train after validation is held out.
    extra_paths: list[str] = []
    # images per file of the canonical dataset; None: one file per split. Sharded, every
    # step streams the data a chunk at a time (data beyond RAM)
    shard_size: Positive | None = None

    @model_validator(mode="after")
    def _room_for_training(self) -> DataParams:
        if self.test_fraction + self.validation_fraction >= 1.0:
            raise ValueError(
                f"test_fraction ({self.test_fraction}) + validation_fraction "
                f"({self.validation_fraction}) must leave images to train on"
            )
        return self


class ValidateParams(_Section):
    """Thresholds of the data-validation suite (``validate``)."""

    class_balance_tolerance: Annotated[float, Field(gt=0.0, le=10.0)] = 0.2
    min_images_per_class: Positive = 1
    channel_mean_range: tuple[Fraction, Fraction] = (0.3, 0.7)
    channel_std_range: tuple[Fraction, Fraction] = (0.1, 0.4)
    min_image_std: Annotated[float, Field(ge=0.0)] = 2.0
    max_duplicate_fraction: Fraction = 0.01

    @model_validator(mode="after")
    def _ordered_ranges(self) -> ValidateParams:
        for name in ("channel_mean_range", "channel_std_range"):
            low, high = getattr(self, name)
            if low >= high:
                raise ValueError(f"{name}: lower bound {low} must be below upper bound {high}")
        return self


class AugmentParams(_Section):
    """The augmentation policy, built from Keras preprocessing layers (``augment``)."""

    horizontal_flip: bool = True
    translate: Annotated[float, Field(ge=0.0, le=0.5)] = 0.125
    rotation: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0
    contrast: Fraction = 0.0
    rand_augment: bool = False
    random_erasing: Fraction = 0.0
    preview_images: Annotated[int, Field(ge=1, le=64)] = 16


# Backbones: Keras' applications (their ImageNet weights download by name), and the one
# built here (efficientnet_lite.py: weights from a local file only).
KerasBackbone = Literal["mobilenet_v2", "resnet50", "efficientnet_b0"]
Backbone = Literal[KerasBackbone, "efficientnet_lite0"]
KERAS_BACKBONES: tuple[str, ...] = get_args(KerasBackbone)
BACKBONES: tuple[str, ...] = get_args(Backbone)  # nested Literals flatten
# ``model.weights`` that name no file: Keras' ImageNet weights, or none (random init).
IMAGENET, NO_WEIGHTS = "imagenet", "none"
NAMED_WEIGHTS = (IMAGENET, NO_WEIGHTS)


class ModelParams(_Section):
    """Backbone, pretrained weights and head."""

    backbone: Backbone = "mobilenet_v2"
    # auto: ``weights_file`` when it exists, else imagenet | imagenet | none | a file
    weights: str = "auto"
    weights_file: str = "../shared/weights/mobilenet_v2_1.0_imagenet_no_top.weights.h5"
    image_size: Annotated[int, Field(ge=32, le=512)] = 96
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2

    def weights_path(self, root: Path) -> Path | None:
        """The local weights file ``weights`` names, resolved against ``root`` (the project's
        root); None for imagenet or none."""
        if self.weights.lower() in NAMED_WEIGHTS:
            return None
        return resolve_path(self.weights, root)


# How a rung trains (image_finetune.training.fit.choose_mode): ``head``, the frozen backbone's
# pooled features cached and the head trained on them; ``tail``, activations cached at
# ``train.cache_boundary`` and the layers after it trained; ``end_to_end``, on the images.
RungMode = Literal["head", "tail", "end_to_end"]
HeadSolver = Literal["auto", "lbfgs", "adam"]


class Rung(_Section):
    """One attempt of the retrain loop; later rungs are stronger and warm-start."""

    name: str
    unfreeze_from: str | None = None
    epochs: Positive = 1
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    warmup_epochs: Annotated[float, Field(ge=0.0)] = 0.0
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-4
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    batch_size: Positive = 128
    image_size: Annotated[int, Field(ge=32, le=512)] | None = None
    early_stopping_patience: Positive | None = None
    # Off unless asked (the default ladder asks): a rung spelled out stays as written.
    min_steps: Positive = 1
    head_solver: HeadSolver = "adam"


DEFAULT_LADDER = (
    Rung(
        name="frozen-head",
        epochs=8,
        learning_rate=0.001,
        label_smoothing=0.1,
        batch_size=256,
        head_solver="auto",
        min_steps=300,
    ),
    Rung(
        name="top-blocks",
        unfreeze_from="block_13_expand",
        epochs=4,
        learning_rate=0.0005,
        warmup_epochs=0.3,
        weight_decay=0.00005,
        label_smoothing=0.1,
        batch_size=128,
        early_stopping_patience=2,
        min_steps=300,
    ),
)


class TrainParams(_Section):
    """The ladder of configurations that the retrain loop climbs (``train``)."""

    seed: Seed = 42
    cache_features: bool = True
    cache_boundary: str | None = "block_12_add"
    flip_cache: bool = True
    # What the frozen parts embed on (image_finetune.training.features.choose_stem_engine):
    # auto, the fast CPU engine (features.default_stem_engine: ONNX Runtime, else OpenVINO)
    # where Keras runs TensorFlow on a CPU and the data is large enough to pay for the
    # conversion, else Keras; tensorflow: the Keras model itself; or a named engine. The
    # cache key records it.
    stem_engine: Literal["auto", "tensorflow", "onnxruntime", "openvino"] = "auto"
    mixed_precision: Literal["auto", "off", "on"] = "auto"
    jit_compile: Literal["auto", "off", "on"] = "auto"
    distribution: Literal["auto", "one_device", "mirrored", "multi_worker"] = "auto"
    host_devices: Annotated[int, Field(ge=1, le=64)] = 1
    batch_scaling: Literal["global", "per_replica"] = "global"
    ladder: list[Rung] = Field(default=list(DEFAULT_LADDER), min_length=1, max_length=8)

    @model_validator(mode="after")
    def _unique_rung_names(self) -> TrainParams:
        names = [rung.name for rung in self.ladder]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"ladder: rung names must be unique, repeated: {duplicated}")
        return self


class EvaluateParams(_Section):
    """Evaluation report settings (``evaluate``)."""

    flip_tta: bool = True
    batch_size: Positive = 256
    bootstrap_samples: Annotated[int, Field(ge=100, le=100_000)] = 1000
    calibration_bins: Annotated[int, Field(ge=2, le=100)] = 15
    gallery_size: Annotated[int, Field(ge=0, le=100)] = 36
    latency_runs: Annotated[int, Field(ge=1, le=1000)] = 30
    most_confused: Annotated[int, Field(ge=1, le=45)] = 5
    # The reference profile (monitoring): PCA width, and the training images it is fitted on.
    profile_dimensions: Annotated[int, Field(ge=1, le=256)] = 32
    profile_fit_images: Annotated[int, Field(ge=10, le=100_000)] = 5000


class GateParams(_Section):
    """Requirements a model must meet (``gate``)."""

    min_accuracy: Fraction = 0.85
    min_macro_f1: Fraction = 0.85
    min_class_recall: Fraction = 0.65
    max_latency_p95_ms: Annotated[float, Field(gt=0.0)] = 200.0
    significance: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05


class EngineParams(_Section):
    """The fast inference engine everything that only predicts runs on (``export-engine``):
    the model exported to ONNX and OpenVINO, checked against Keras on test, and an int8
    variant that serves only where it loses at most ``max_int8_loss_points`` accuracy points
    on test and is not significantly worse by the exact McNemar test at
    ``gate.significance``."""

    # auto: image_finetune.engines.DEFAULT_ENGINE where it installs (the faster one, measured)
    engine: Literal["auto", "tensorflow", "onnxruntime", "openvino"] = "auto"
    int8: bool = True
    calibration_images: Annotated[int, Field(ge=1, le=100_000)] = 300
    max_int8_loss_points: Annotated[float, Field(ge=0.0, le=100.0)] = 0.5


class RegistryParams(_Section):
    """MLflow tracking, registration and promotion (``register``)."""

    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "image-finetune"
    model_name: str = "cifar10-classifier"
    promote: bool = True
    # A DVC experiment registers a challenger; it moves @champion only when this says so.
    promote_experiments: bool = False


class Params(_Section):
    """The whole params.yaml."""

    data: DataParams = DataParams()
    validate_: ValidateParams = Field(default=ValidateParams(), alias="validate")
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()
    registry: RegistryParams = RegistryParams()
    engine: EngineParams = EngineParams()

    model_config = ConfigDict(**STRICT, populate_by_name=True)

    def digest(self) -> str:
        """A stable sha256 of the effective configuration (for lineage tags and caches)."""
        blob = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping names the same key twice (YAML would silently keep the last)."""

    def __init__(self, key, first: yaml.Mark, again: yaml.Mark):
        super().__init__(
            problem=f"key {key!r} appears twice (line {first.line + 1} and line "
            f"{again.line + 1}): only one may stay",
            problem_mark=again,
        )
        self.key = key


class StrictLoader(yaml.SafeLoader):
    """The safe YAML loader, refusing a key written twice in one mapping (a merge ``<<``
    may still be overridden: that is what it is for)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # an unhashable key: the base loader says so
            if first is not key_node.start_mark:
                raise DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep)


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"  {path}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def _apply_env(raw: dict) -> dict:
    overrides = {
        DATA_ENV: ("data", "path"),
        WEIGHTS_ENV: ("model", "weights"),
        TRACKING_ENV: ("registry", "tracking_uri"),
    }
    for env, (section, key) in overrides.items():
        value = os.environ.get(env)
        if value:
            raw.setdefault(section, {})
            if not isinstance(raw[section], dict):
                continue  # leave the type error to the schema
            raw[section][key] = value
    return raw


def load_params(path: str | Path = "params.yaml", *, use_env: bool = True) -> Params:
    """Read and validate params.yaml; raise ConfigError naming every bad key."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a params file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    if use_env:
        raw = _apply_env(raw)
    return parse_params(raw, str(path))


def parse_params(raw: dict, source: str = "params") -> Params:
    """Validate a params mapping; raise ConfigError naming every bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n{_format_errors(exc)}") from exc


def resolve_path(value: str, base: Path | None = None) -> Path:
    """Resolve a params path relative to the project root (the params file's folder)."""
    candidate = Path(value).expanduser()
    if candidate.is_absolute() or base is None:
        return candidate
    return (base / candidate).resolve()
