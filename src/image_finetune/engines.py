"""Fast CPU inference engines for everything that only predicts: one Keras model exported
once (a SavedModel, augmentation bypassed) to ONNX and OpenVINO IR, fp32 and int8, and one
predict interface over Keras, ONNX Runtime and OpenVINO.

onnxruntime, openvino, tensorflow, keras, tf2onnx and nncf are imported inside the functions
that use them: the server imports this module and must not pull TensorFlow in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from image_finetune.errors import ConfigError, MissingInputError
from image_finetune.file_names import ENGINE_MANIFEST
from image_finetune.hashing import sha256_file
from image_finetune.monitoring.summaries import EMBEDDING, PROBABILITIES, embedding_model
from image_finetune.stats import mcnemar_greater

if TYPE_CHECKING:
    import keras

ENGINE_ENV = "IMAGE_FINETUNE_ENGINE"
KERAS_ENGINE = "tensorflow"  # Keras itself, on its backend
ENGINES = (KERAS_ENGINE, "onnxruntime", "openvino")
FAST_ENGINES = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "int8")
# OpenVINO, because what serves is int8 wherever the accuracy rule lets it, and OpenVINO's
# int8 (NNCF) is the fastest variant by far and the more accurate one; in fp32 (int8 refused)
# ONNX Runtime is ~15% faster. Measured 07:58 UTC 2026-12-07 on this model (MobileNetV2 at
# 96 px inside the 32x32 uint8 classifier) on the 2-core AMD EPYC (avx2 fma avx512f
# avx512_vnni avx512_bf16), as images per CPU-second with one inference thread (process CPU
# time: the machine ran other jobs at a load of ~10, so wall time measured the neighbours),
# three rounds, /tmp script in the eng-core report:
#                      batch 1    batch 32    batch 256
#   tensorflow fp32    152-155    341-365     319-323
#   onnxruntime fp32   536-589    638-666     595-609
#   openvino fp32      378-439    533-590     508-513
#   onnxruntime int8   816-875    996-1030    935-990   (QDQ per-channel; -0.46 points)
#   openvino int8      659-888    1454-1459   1401-1404 (NNCF; -0.06 to -0.16 points)
DEFAULT_ENGINE = "openvino"

# the classifier graph's named outputs; a model without a pooled head has one, "output"
OUTPUT = "output"
INPUT_NAME = "image"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
OPENVINO_FOLDER = "openvino"
OPENVINO_FILE = "model.xml"
OPENVINO_INT8_FILE = "model.int8.xml"
ONNX_OPSET = 17
# An fp32 engine gives Keras's probabilities within this, or the export fails: float32
# summation order differs between the engines' kernels (measured: 1.3e-5 at most over the
# 10,000 CIFAR-10 test images, both engines, MobileNetV2 classifier), never more.
FP32_TOLERANCE = 1e-4
MODEL_FILES = {
    ("onnxruntime", "fp32"): ONNX_FILE,
    ("onnxruntime", "int8"): ONNX_INT8_FILE,
    ("openvino", "fp32"): f"{OPENVINO_FOLDER}/{OPENVINO_FILE}",
    ("openvino", "int8"): f"{OPENVINO_FOLDER}/{OPENVINO_INT8_FILE}",
}
# OpenVINO's CPU plugin computes in bf16 by default where the CPU has it (avx512_bf16 here):
# probabilities 0.02 off. fp32 is asked for explicitly, int8 variants too (their
# non-quantized layers then stay fp32, as the accuracy rule evaluated them).
# Its threads are pinned to cores by default, which collapses throughput wherever anything
# else shares those cores (uvicorn's threads, a second process, a busy node): measured here
# with two busy processes beside it, 205 -> 309 images/s at batch 1, 266 -> 456 at batch 32
# unpinned, and no loss on an idle machine (419 -> 511, 564 -> 595).
OPENVINO_FP32 = {"INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}

log = logging.getLogger(__name__)


class Predictor(Protocol):
    """What evaluation, serving, batch prediction and the feature cache predict with."""

    engine: str
    precision: str
    input_shape: tuple[int, ...]  # (H, W, C)
    num_classes: int  # the primary output's last dimension

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        """float32 primary output (class probabilities for a classifier) of a batch."""

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every named output of a batch: probabilities and, where exported, embedding."""


# -- choosing an engine ---------------------------------------------------------------------


def resolve_engine(requested: str | None = None) -> str:
    """The engine to run: ``requested``, else $IMAGE_FINETUNE_ENGINE, else ``auto``; auto is
    DEFAULT_ENGINE where its package imports, else the other fast engine, else tensorflow."""
    choice = requested_engine(requested)
    if choice == "auto":
        for engine in (DEFAULT_ENGINE, *[e for e in FAST_ENGINES if e != DEFAULT_ENGINE]):
            if engine_available(engine):
                return engine
        return KERAS_ENGINE
    if choice not in ENGINES:
        raise ConfigError(
            f"engine {choice!r} is not one of auto, {', '.join(ENGINES)} "
            f"(the --engine option or ${ENGINE_ENV})"
        )
    return choice


def requested_engine(requested: str | None) -> str:
    """The engine asked for: ``requested``, else $IMAGE_FINETUNE_ENGINE, else ``auto``."""
    return (requested or os.environ.get(ENGINE_ENV) or "auto").strip().lower()


def engine_available(engine: str) -> bool:
    """Whether the engine's package imports here."""
    import importlib.util

    package = {"tensorflow": "tensorflow", "onnxruntime": "onnxruntime", "openvino": "openvino"}[
        engine
    ]
    return importlib.util.find_spec(package) is not None


def check_precision(precision: str) -> str:
    """``precision`` when it is one of PRECISIONS, else a ConfigError naming the choices."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def model_file(folder: Path, engine: str, precision: str = "fp32") -> Path:
    """Where ``engine``'s ``precision`` model lives inside an engine folder."""
    if engine not in FAST_ENGINES:
        raise ConfigError(
            f"engine {engine!r} has no file in an engine folder (one of {', '.join(FAST_ENGINES)})"
        )
    return Path(folder) / MODEL_FILES[engine, check_precision(precision)]


def model_files(folder: Path, engine: str, precision: str = "fp32") -> list[Path]:
    """Every file of ``engine``'s ``precision`` model (an OpenVINO IR's weights are in .bin)."""
    path = model_file(folder, engine, precision)
    return [path, path.with_suffix(".bin")] if engine == "openvino" else [path]


# -- export ---------------------------------------------------------------------------------


def output_model(model: keras.Model) -> keras.Model:
    """The graph to export: a classifier built by this project as [probabilities, embedding]
    in one pass (monitoring.summaries.embedding_model, augmentation bypassed); any other
    model as it is."""
    try:
        return embedding_model(model)
    except ValueError:
        return model


def write_savedmodel(model: keras.Model, out: Path) -> Path:
    """A SavedModel whose ``serving_default`` takes the model's input dtype (uint8 images for
    a classifier) with named outputs: ``probabilities`` and ``embedding`` for this project's
    classifiers, ``output`` for any single-output model. Called with training=False: Keras'
    random augmentation layers default to training mode, which a plain model.export() is."""
    import keras
    import tensorflow as tf  # TensorFlow-only: imported where used

    graph = output_model(model)
    names = [PROBABILITIES, EMBEDDING] if graph is not model else [OUTPUT]
    if len(graph.outputs) != len(names):
        raise ValueError(
            f"{model.name} has {len(graph.outputs)} outputs: only single-output "
            "models and this project's classifiers can be exported"
        )

    def serve(images):
        values = graph(images, training=False)
        values = values if isinstance(values, list | tuple) else [values]
        return dict(zip(names, values, strict=True))

    archive = keras.export.ExportArchive()
    archive.track(graph)
    spec = tf.TensorSpec((None, *model.input_shape[1:]), model.inputs[0].dtype, name=INPUT_NAME)
    archive.add_endpoint("serving_default", serve, input_signature=[spec])
    archive.write_out(str(out), verbose=False)
    return Path(out)


def convert_keras(model: keras.Model, folder: Path, engines=FAST_ENGINES) -> dict[str, Path]:
    """Write ``model`` to ``folder/model.onnx`` and/or ``folder/openvino/model.xml`` (+ .bin),
    fp32, through a SavedModel (never the Keras 3 converters); {engine: file} out."""
    unknown = set(engines) - set(FAST_ENGINES)
    if unknown:
        raise ConfigError(f"cannot convert to {sorted(unknown)}: one of {FAST_ENGINES}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    with tempfile.TemporaryDirectory(dir=folder, prefix=".savedmodel-") as scratch:
        savedmodel = write_savedmodel(model, Path(scratch) / "savedmodel")
        if "onnxruntime" in engines:
            written["onnxruntime"] = savedmodel_to_onnx(
                savedmodel, model_file(folder, "onnxruntime")
            )
        if "openvino" in engines:
            written["openvino"] = savedmodel_to_openvino(savedmodel, model_file(folder, "openvino"))
    return written


def savedmodel_to_onnx(savedmodel: Path, out: Path) -> Path:
    """tf2onnx in process (what its CLI runs for --saved-model), its chatter kept down."""
    with quiet_loggers("tf2onnx", "tensorflow"):
        import tf2onnx.convert
        from tf2onnx import tf_loader

        graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
            str(savedmodel),
            None,
            None,
            tag="serve",
            signatures=["serving_default"],
            return_tensors_to_rename=True,
        )
        tf2onnx.convert.from_graph_def(
            graph_def,
            input_names=inputs,
            output_names=outputs,
            opset=ONNX_OPSET,
            tensors_to_rename=renames,
            output_path=str(out),
        )
    return out


def savedmodel_to_openvino(savedmodel: Path, out: Path) -> Path:
    """OpenVINO IR with fp32 weights (save_model would halve them to fp16 by default)."""
    import openvino

    out.parent.mkdir(parents=True, exist_ok=True)
    openvino.save_model(openvino.convert_model(str(savedmodel)), str(out), compress_to_fp16=False)
    return out


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Raise the named loggers to ERROR for a block (converters log every pass at INFO)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# -- int8 -----------------------------------------------------------------------------------


def quantize_int8(folder: Path, engine: str, calibration_images: np.ndarray) -> Path:
    """Post-training static int8 quantization of the folder's fp32 ``engine`` model,
    calibrated on ``calibration_images`` (a few hundred training images, uint8 NHWC): NNCF on
    the OpenVINO IR, ONNX Runtime's QDQ per-channel quantization on the ONNX model. The int8
    file beside the fp32 one out. Its accuracy is judged by the caller (accuracy_rule)."""
    images = np.asarray(calibration_images)
    if len(images) == 0:
        raise ValueError("int8 calibration needs at least one image")
    source, target = model_file(folder, engine, "fp32"), model_file(folder, engine, "int8")
    if not source.exists():
        raise MissingInputError(f"{source}: no fp32 {engine} model to quantize")
    if engine == "openvino":
        return quantize_openvino(source, target, images)
    return quantize_onnx(source, target, images)


def quantize_openvino(source: Path, target: Path, images: np.ndarray) -> Path:
    """NNCF's default post-training quantization (min-max ranges, fast bias correction),
    one calibration image per item as NNCF expects."""
    import openvino

    with quiet_loggers("nncf"):
        import nncf

        dataset = nncf.Dataset([images[i : i + 1] for i in range(len(images))])
        quantized = nncf.quantize(
            openvino.Core().read_model(str(source)), dataset, subset_size=len(images)
        )
    openvino.save_model(quantized, str(target), compress_to_fp16=False)
    return target


def quantize_onnx(source: Path, target: Path, images: np.ndarray) -> Path:
    """ONNX Runtime static quantization: QDQ format, int8 weights per channel, uint8
    activations with min-max ranges from the calibration images."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self, name: str):
            self.batches = iter([{name: images[i : i + 32]} for i in range(0, len(images), 32)])

        def get_next(self):
            return next(self.batches, None)

    input_name = onnx_input_name(source)
    with quiet_loggers("onnxruntime"):
        quantize_static(
            str(source),
            str(target),
            Batches(input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return target


def onnx_input_name(path: Path) -> str:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


# -- the accuracy rules ---------------------------------------------------------------------


def agreement(reference: np.ndarray, probabilities: np.ndarray) -> dict:
    """How an engine's probabilities agree with the reference's (Keras's) on the same
    images: predicted classes that differ, and the largest absolute probability difference."""
    reference, probabilities = np.asarray(reference), np.asarray(probabilities)
    if reference.shape != probabilities.shape:
        raise ValueError(
            f"agreement needs the same images: {reference.shape} vs {probabilities.shape}"
        )
    return {
        "images": len(reference),
        "disagreements": int(np.sum(reference.argmax(1) != probabilities.argmax(1))),
        "max_abs_probability_difference": float(np.abs(reference - probabilities).max(initial=0.0)),
    }


def int8_verdict(
    fp32_correct: np.ndarray, int8_correct: np.ndarray, max_loss_points: float, significance: float
) -> dict:
    """Whether an int8 variant may serve, from per-image correctness of the fp32 model and of
    the int8 one on the same (test) images: only if it loses at most ``max_loss_points``
    accuracy points AND the exact one-sided McNemar test does not find fp32 right
    significantly more often (p >= ``significance``)."""
    fp32_correct = np.asarray(fp32_correct, dtype=bool)
    int8_correct = np.asarray(int8_correct, dtype=bool)
    test = mcnemar_greater(fp32_correct, int8_correct)  # checks the pairing too
    if len(fp32_correct) == 0:
        raise ValueError("the int8 rule needs at least one image")
    images = len(fp32_correct)
    # from counts: 50 images of 10,000 are exactly 0.5 points, with no rounding on the way
    loss = (int(fp32_correct.sum()) - int(int8_correct.sum())) * 100.0 / images
    reasons = []
    if loss > max_loss_points:
        reasons.append(f"loses {loss:.2f} accuracy points (at most {max_loss_points} allowed)")
    if test["p_value"] < significance:
        reasons.append(
            f"significantly worse than fp32 by McNemar (p = {test['p_value']:.3g} "
            f"< {significance}: fp32 alone right on {test['candidate_only_correct']}"
            f" images, int8 alone on {test['champion_only_correct']})"
        )
    return {
        "images": images,
        "accuracy": float(int8_correct.mean()),
        "fp32_accuracy": float(fp32_correct.mean()),
        "loss_points": loss,
        "mcnemar_p_value": test["p_value"],
        "servable": not reasons,
        "reason": "; ".join(reasons)
        or (
            f"loses {loss:.2f} points (at most {max_loss_points}) and is not significantly "
            f"worse (McNemar p = {test['p_value']:.3g} >= {significance})"
        ),
    }


# -- the engine folder ----------------------------------------------------------------------


def read_manifest(folder: Path) -> dict:
    """An engine folder's manifest (engine.json), with a clear error where it is missing."""
    path = Path(folder) / ENGINE_MANIFEST
    if not path.is_file():
        raise MissingInputError(f"{path}: not an engine folder (run the export-engine step)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MissingInputError(
            f"{path}: unreadable engine manifest ({exc}); run the export-engine step again"
        ) from None


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in an engine folder but its manifest, by relative path."""
    folder = Path(folder)
    hashes = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative != ENGINE_MANIFEST:
            hashes[relative] = sha256_file(path)
    return hashes


# -- predicting -----------------------------------------------------------------------------


class KerasPredictor:
    """The Keras model itself (engine ``tensorflow``)."""

    engine = KERAS_ENGINE
    precision = "fp32"

    def __init__(self, model: keras.Model):
        self.model = model
        self.input_shape = tuple(int(d) for d in model.input_shape[1:])
        self.num_classes = int(model.output_shape[-1])
        self.both: keras.Model | None = None  # the model with its embedding output too

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(np.asarray(images)), dtype=np.float32)

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self.both is None:
            self.both = output_model(self.model)
        if self.both is self.model:
            return {OUTPUT: self.predict_on_batch(images)}
        probabilities, embedding = self.both.predict_on_batch(np.asarray(images))
        return {
            PROBABILITIES: np.asarray(probabilities, dtype=np.float32),
            EMBEDDING: np.asarray(embedding, dtype=np.float32),
        }


def keras_predictor(model: keras.Model) -> KerasPredictor:
    return KerasPredictor(model)


class OnnxPredictor:
    """An ONNX Runtime session on the CPU (thread-safe: run() may be called concurrently)."""

    engine = "onnxruntime"

    def __init__(self, path: Path, precision: str, threads: int | None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.precision = precision
        [model_input] = self.session.get_inputs()
        self.input_name = model_input.name
        self.dtype = np.dtype(ONNX_DTYPES.get(model_input.type, "float32"))
        self.input_shape = tuple(int(d) for d in model_input.shape[1:])
        self.names = [o.name for o in self.session.get_outputs()]
        self.primary = PROBABILITIES if PROBABILITIES in self.names else self.names[0]
        self.num_classes = int(self.session.get_outputs()[self.names.index(self.primary)].shape[-1])

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(
            None, {self.input_name: as_input(images, self.dtype, self.input_shape)}
        )
        return {
            name: np.asarray(v, dtype=np.float32)
            for name, v in zip(self.names, values, strict=True)
        }

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        return self.outputs(images)[self.primary]


ONNX_DTYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(int32)": "int32"}


class OpenVinoPredictor:
    """A model compiled for OpenVINO's CPU plugin in fp32 arithmetic (int8 where quantized);
    one infer request per calling thread, so concurrent callers never share one."""

    engine = "openvino"

    def __init__(self, path: Path, precision: str, threads: int | None):
        import openvino

        config = dict(OPENVINO_FP32)
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = openvino.Core().compile_model(str(path), "CPU", config)
        self.precision = precision
        model_input = self.compiled.inputs[0]
        self.dtype = np.dtype(model_input.get_element_type().to_dtype())
        self.input_shape = tuple(int(d.get_length()) for d in model_input.get_partial_shape()[1:])
        self.names = [o.get_any_name() for o in self.compiled.outputs]
        self.primary = PROBABILITIES if PROBABILITIES in self.names else self.names[0]
        last = self.compiled.outputs[self.names.index(self.primary)].get_partial_shape()[-1]
        self.num_classes = int(last.get_length())
        self.local = threading.local()

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        request = getattr(self.local, "request", None)
        if request is None:
            request = self.local.request = self.compiled.create_infer_request()
        results = request.infer([as_input(images, self.dtype, self.input_shape)])
        return {
            name: np.array(results[output], dtype=np.float32)  # a copy: the request reuses
            for name, output in zip(self.names, self.compiled.outputs, strict=True)
        }

    def predict_on_batch(self, images: np.ndarray) -> np.ndarray:
        return self.outputs(images)[self.primary]


def as_input(images: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A contiguous batch of the model's input dtype, with a clear error for a wrong shape."""
    batch = np.ascontiguousarray(images, dtype=dtype)
    if batch.ndim != len(shape) + 1 or tuple(batch.shape[1:]) != shape:
        raise ValueError(
            f"the model takes images of shape [N, {', '.join(map(str, shape))}]"
            f", got {list(batch.shape)}"
        )
    return batch


def open_predictor(
    folder: Path, engine: str = "auto", precision: str = "fp32", threads: int | None = None
) -> Predictor:
    """A predictor over an engine folder's ``engine`` model at ``precision``; ``auto`` picks
    as resolve_engine does, among the engines whose file the folder has."""
    folder = Path(folder)
    precision = check_precision(precision)
    engine = folder_engine(folder, engine)
    if engine == KERAS_ENGINE:
        raise ConfigError(
            "an engine folder holds no TensorFlow model: load the Keras model "
            "(inference.load_classifier) and use keras_predictor"
        )
    path = model_file(folder, engine, precision)
    if not path.exists():
        serves = (
            f"; it serves {read_manifest(folder)['default_engine']}, the one "
            "export-engine converts (engine.engine)"
            if (folder / ENGINE_MANIFEST).is_file()
            else ""
        )
        raise MissingInputError(
            f"{path}: the engine folder has no {precision} {engine} model "
            f"(run the export-engine step){serves}"
        )
    cls = OnnxPredictor if engine == "onnxruntime" else OpenVinoPredictor
    return cls(path, precision, threads)


def folder_engine(folder: Path, requested: str | None = None) -> str:
    """The engine to open ``folder`` on: the one requested (or $IMAGE_FINETUNE_ENGINE); for
    auto, the folder's own serving engine where it is installed, else the first installed
    engine whose model the folder has (export-engine converts only the engine that serves)."""
    choice = requested_engine(requested)
    if choice != "auto":
        return resolve_engine(choice)
    manifest = folder / ENGINE_MANIFEST
    preferred = [read_manifest(folder)["default_engine"]] if manifest.is_file() else []
    for engine in (*preferred, DEFAULT_ENGINE, *FAST_ENGINES):
        if (
            engine in FAST_ENGINES
            and engine_available(engine)
            and model_file(folder, engine, "fp32").exists()
        ):
            return engine
    return resolve_engine("auto")


def serving_predictor(model: Path, engine: Path | None) -> tuple[Predictor, list[Path]]:
    """The predictor that will serve and its model files: the engine folder's default engine
    at its serving precision, or the Keras model (no folder, or an engine of tensorflow)."""
    if engine is not None:
        manifest = read_manifest(engine)
        if manifest["default_engine"] != KERAS_ENGINE:
            name, precision = manifest["default_engine"], manifest["serving_precision"]
            return open_predictor(engine, name, precision), model_files(engine, name, precision)
    from image_finetune.inference import load_classifier

    return keras_predictor(load_classifier(model)), [Path(model)]


def compile_keras(
    model: keras.Model, engine: str, workdir: Path, threads: int | None = None
) -> Predictor:
    """Convert ``model`` (a classifier, or any one-input model such as a frozen stem) and open
    it on ``engine`` in one call; ``tensorflow`` gives the Keras model itself."""
    engine = resolve_engine(engine)
    if engine == KERAS_ENGINE:
        return keras_predictor(model)
    convert_keras(model, workdir, engines=(engine,))
    return open_predictor(workdir, engine, "fp32", threads)
