"""What every component shares: the container image setting and the decorator that turns a
step function into a lightweight KFP component.

Lightweight components embed their function's source in the pipeline YAML and run it with
the image's Python, so the same code runs in a cluster (inside the project's image) and under
``kfp.local``'s subprocess runner (inside this virtual environment). Nothing is pip-installed
at run time: the image and the venv already hold the project, from ``uv.lock``.
"""

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from kfp import dsl
from kfp.dsl.python_component import PythonComponent

if TYPE_CHECKING:
    from image_finetune.steps.check_params import Params

IMAGE_ENV = "IMAGE_FINETUNE_IMAGE"
DEFAULT_IMAGE = "ghcr.io/image-finetune/image-finetune:0.1.0"


def configured_image() -> str:
    """The one image setting: ``$IMAGE_FINETUNE_IMAGE``, else the default."""
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def cpu_image(image: str) -> str:
    """The CPU variant of an image setting (tag suffix ``-cpu``, infra/docker/Dockerfile.cpu)."""
    return f"{image}-cpu"


def gpu_image(image: str) -> str:
    """The GPU variant of an image setting (tag suffix ``-gpu``, infra/docker/Dockerfile.gpu)."""
    return f"{image}-gpu"


def read_params(**sections: dict) -> "Params":
    """The params.yaml sections a step received (one mapping parameter each), validated by
    the typed config; sections not received keep their defaults.

    Embedded in every component's source, so it imports what it needs itself.
    """
    from image_finetune.steps.check_params import parse_sections

    return parse_sections(sections, "pipeline parameters")


def component(func: Callable) -> PythonComponent:
    """A lightweight component on the project's CPU image that installs nothing at run time,
    with :func:`read_params` embedded beside it. Its function parses its inputs, calls
    exactly one step of ``image_finetune.steps`` and reports the results to KFP."""
    return dsl.component(
        func,
        base_image=cpu_image(configured_image()),
        packages_to_install=[],
        install_kfp_package=False,
        additional_funcs=[read_params],
    )
