"""The registered model's generic interface (an MLflow pyfunc): base64-encoded images in,
labels and class probabilities out, decoded and fitted as the server decodes them
(serving/decode.py), within the server's default limits.

A registered version has two flavors in one MLmodel: ``keras`` (the network itself, what
``mlflow.keras.load_model`` and this project's server load) and ``python_function`` (this
class, what ``mlflow models serve`` and ``mlflow.pyfunc.load_model`` use). The Keras file is
stored once, as the pyfunc's artifact, and the Keras flavor points at it. Loading the pyfunc
needs this package installed (it imports the server's decoding)."""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.pyfunc.model import PythonModel
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

from image_finetune.file_names import MODEL_FILE
from image_finetune.inference import load_classifier, predict_batches
from image_finetune.serving.decode import decode_all
from image_finetune.serving.errors import Rejected
from image_finetune.serving.settings import ServeSettings

IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
PROBABILITIES_COLUMN = "probabilities"
KERAS_ARTIFACT = "keras_model"
KERAS_FLAVOR_DATA = "artifacts"  # where pyfunc.save_model copies the artifacts
PREDICT_BATCH = 64

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.string, IMAGE_COLUMN)]),
    outputs=Schema(
        [
            ColSpec(DataType.string, LABEL_COLUMN),
            ColSpec(Array(DataType.double), PROBABILITIES_COLUMN),
        ]
    ),
)


def bad_input(message: str) -> MlflowException:
    """A refusal the scoring server answers with 400 and this message (no traceback)."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def encoded_images(model_input) -> list[str]:
    """The base64 strings of a DataFrame's ``image`` column, a list, or one string."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise bad_input(f"the input has no {IMAGE_COLUMN!r} column (base64-encoded images)")
        values: Iterable = model_input[IMAGE_COLUMN]
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, list | tuple | np.ndarray | pd.Series):
        values = model_input
    else:
        raise bad_input(f"expected base64-encoded images, got {type(model_input).__name__}")
    texts = list(values)
    if not texts:
        raise bad_input("no image in the input")
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str | bytes)]
    if bad:
        raise bad_input(f"row {bad[0]}: expected a base64 string, got {type(texts[bad[0]])}")
    return texts


def image_bytes(row: int, text: str | bytes, max_bytes: int) -> bytes:
    """One row's image, base64-decoded; its size is checked before decoding."""
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise bad_input(f"row {row}: the encoded image is over the limit of {max_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_input(f"row {row}: not valid base64 ({exc})") from None


class ImageClassifier(PythonModel):
    """Images (base64) in; the most probable class and every class' probability out."""

    def __init__(self, class_names: list[str], image_fit: str):
        self.class_names = list(class_names)
        self.image_fit = image_fit

    def load_context(self, context) -> None:
        self.model = load_classifier(Path(context.artifacts[KERAS_ARTIFACT]))
        self.size = int(self.model.input_shape[1])
        self.settings = ServeSettings()

    def decode(self, texts: Sequence[str | bytes]) -> np.ndarray:
        """The rows as one uint8 batch, each fitted to the model's input as the server does."""
        batch = np.empty((len(texts), self.size, self.size, 3), np.uint8)
        for row, text in enumerate(texts):
            data = image_bytes(row, text, self.settings.max_image_bytes)
            try:
                batch[row] = decode_all(
                    [(f"row {row}", data)], self.size, self.settings, self.image_fit
                )[0]
            except Rejected as exc:
                raise bad_input(exc.message) from None
        return batch

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        """``label`` and ``probabilities`` (one per class, in ``class_names`` order) per row."""
        probabilities = predict_batches(
            self.model, self.decode(encoded_images(model_input)), PREDICT_BATCH, "pyfunc"
        )
        names = self.class_names or [str(i) for i in range(probabilities.shape[1])]
        return pd.DataFrame(
            {
                LABEL_COLUMN: [names[i] for i in probabilities.argmax(axis=1)],
                PROBABILITIES_COLUMN: [row.astype(float).tolist() for row in probabilities],
            }
        )


class KerasAndImageFlavors:
    """What ``mlflow.models.Model.log`` needs of a flavor: a name and ``save_model``. It saves
    the pyfunc with the Keras file as its artifact, then declares the ``keras`` flavor on
    that same file, so both loaders read one copy."""

    __name__ = "mlflow.pyfunc"  # the LoggedModel's flavor, as MLflow's own pyfunc records it

    @staticmethod
    def save_model(
        path: str,
        mlflow_model: Model,
        keras_file: Path,
        class_names: list[str],
        image_fit: str,
        **kwargs,
    ) -> None:
        from importlib.metadata import version

        with tempfile.TemporaryDirectory() as work:
            # The saved file itself, byte for byte (its digest is the one DVC and the engine
            # record): loading and saving it again would cost a TensorFlow start.
            artifact = Path(work) / MODEL_FILE  # the Keras flavor reads <data>/model.keras
            shutil.copyfile(keras_file, artifact)
            mlflow.pyfunc.save_model(
                path,
                mlflow_model=mlflow_model,
                python_model=ImageClassifier(class_names, image_fit),
                artifacts={KERAS_ARTIFACT: str(artifact)},
                **kwargs,
            )
        mlflow_model.add_flavor(
            "keras",
            keras_version=version("keras"),
            data=KERAS_FLAVOR_DATA,
            save_exported_model=False,
        )
        mlflow_model.save(str(Path(path) / "MLmodel"))


def log_image_classifier(
    keras_file: Path, example: np.ndarray, pip_requirements: list[str], metadata: dict
):
    """Log the saved classifier ``keras_file`` in the active run as a LoggedModel named
    ``model`` with both flavors; MLflow's ModelInfo. ``example`` (uint8 images) is not
    needed: the signature is fixed."""
    del example
    names = metadata.get("class_names") or []
    return Model.log(
        artifact_path=None,
        name="model",
        flavor=KerasAndImageFlavors(),
        keras_file=Path(keras_file),
        class_names=names,
        image_fit=metadata.get("image_fit", "resize"),
        signature=SIGNATURE,
        pip_requirements=[*pip_requirements, *pyfunc_requirements()],
        metadata=metadata,
    )


def pyfunc_requirements() -> list[str]:
    """What the pyfunc imports beyond the Keras model's own requirements (pinned)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("pandas", "pillow", "pydantic")]
