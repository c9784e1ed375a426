"""The ``validate`` step: fact tables -> Great Expectations suites -> ``result.json``,
fact CSVs and Data Docs; fails on any blocking expectation."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from image_finetune.atomic import atomic_directory
from image_finetune.config import Params
from image_finetune.data.canonical import read_manifest, verify_shards
from image_finetune.errors import DataValidationError
from image_finetune.steps.layout import (
    CHANNEL_STATS_CSV,
    CLASS_COUNTS_CSV,
    DATA_DOCS_FOLDER,
    RESULT_FILE,
)
from image_finetune.validation.facts import class_counts, dataset_facts
from image_finetune.validation.suites import ValidationReport, run_suites

log = logging.getLogger(__name__)


def validate_data(params: Params, data: Path, out: Path) -> ValidationReport:
    """Validate the canonical dataset in ``data``; write the report to ``out``.

    Outputs are written even when validation fails, so the failure can be read; then
    DataValidationError is raised if a blocking expectation failed.
    """
    manifest = read_manifest(data)
    verify_shards(data)
    facts, channels = dataset_facts(data)
    tables = {
        "images": facts,
        "class_counts": class_counts(facts, manifest),
        "channel_stats": channels,
    }
    with atomic_directory(out) as staging:
        report = run_suites(tables, params.validate_, manifest, staging / DATA_DOCS_FOLDER)
        tables["class_counts"].to_csv(staging / CLASS_COUNTS_CSV, index=False)
        tables["channel_stats"].to_csv(staging / CHANNEL_STATS_CSV, index=False)
        payload = asdict(report)
        payload["data_docs"] = f"{DATA_DOCS_FOLDER}/index.html" if report.data_docs else None
        payload["images"] = int(len(facts))
        (staging / RESULT_FILE).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    log.info("%s", report.summary())
    if not report.success:
        raise DataValidationError(report.summary())
    return report
