"""The ``check-params`` step: the configuration, validated before any work."""

from __future__ import annotations

from image_finetune.config import Params
from image_finetune.errors import ConfigError

# The Kubeflow components import steps only: how they parse the sections they receive, merge
# the knobs into them and hand the sections on.
from image_finetune.knobs import merge_knobs as merge_knobs
from image_finetune.knobs import parse_sections as parse_sections
from image_finetune.knobs import section_mappings as section_mappings


def check_params(params: Params, rungs: int | None = None) -> str:
    """The effective configuration as JSON. With ``rungs`` (what a compiled pipeline
    unrolled), the ladder must have that many rungs."""
    if rungs is not None and len(params.train.ladder) != rungs:
        raise ConfigError(
            f"train.ladder has {len(params.train.ladder)} rungs but this pipeline was compiled "
            f"for {rungs}: recompile it from these params (image-finetune-pipeline compile)"
        )
    return params.model_dump_json(indent=2, by_alias=True)
