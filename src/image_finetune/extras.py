"""Which extra (pyproject.toml's optional dependencies, one per role) installs each optional
package, and the clear error a command gives when its extra is missing.

The core install holds only what every role runs (numpy, pillow, pydantic, pyyaml, tqdm,
typer); everything else is imported where it is used. :func:`require` imports one package or
raises :class:`~image_finetune.errors.MissingExtraError`; the command line's error handler
(``console.reported``) turns any other missing import of these packages into the same
error through :func:`raise_missing_extra`.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import NoReturn

from image_finetune.errors import MissingExtraError

# The import name of each optional package -> the extra that declares it.
EXTRA_OF = {
    "great_expectations": "validate",
    "pandas": "validate",
    "keras": "train",
    "tensorflow": "train",
    "tensorflow_datasets": "train",
    "sklearn": "train",
    "scipy": "train",
    "matplotlib": "train",
    "mlflow": "tracking",
    "boto3": "tracking",
    "botocore": "tracking",
    "psycopg2": "tracking",
    "kfp": "pipeline",
    "kubernetes": "pipeline",
    "docker": "pipeline",
    "dvc": "dvc",
    "dvclive": "dvc",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "prometheus_client": "serve",
    "httpx": "serve",
    "httptools": "serve",
    "uvloop": "serve",
    "onnxruntime": "engine",
    "openvino": "engine",
    "tf2onnx": "export",
    "onnx": "export",
    "nncf": "export",
    "jax": "backends",
}


def missing_extra(error: ModuleNotFoundError) -> MissingExtraError | None:
    """The extra to install when ``error`` is an optional package that is not installed;
    None for anything else (a first-party bug, or a package that is there but broken inside,
    whose own error is the one to read)."""
    top = (error.name or "").partition(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None or importlib.util.find_spec(top) is not None:
        return None
    return MissingExtraError(top, extra)


def raise_missing_extra(error: ModuleNotFoundError) -> NoReturn:
    """The error naming the extra to install, or ``error`` itself when it is not that."""
    missing = missing_extra(error)
    if missing is None:
        raise error
    raise missing from error


def require(module: str) -> ModuleType:
    """``import module``, or the error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise_missing_extra(error)
