"""Great Expectations suites over the fact tables.

Expectations with severity ``critical`` block the pipeline; ``warning`` ones
are reported without failing it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from image_finetune.config import ValidateParams
from image_finetune.extras import require

# Imported here, where validation runs and nowhere else: the `validate` extra. A missing one
# stops the step before it reads any data, with the extra to install. No usage reports
# (GX reads the setting when it is imported).
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
gx = require("great_expectations")
gxe = require("great_expectations.expectations")

log = logging.getLogger(__name__)

WARNING = "warning"
CRITICAL = "critical"
EXAMPLES = 20
DOCS_SITE = "validation"


@dataclass
class Finding:
    """One evaluated expectation, reduced to what a person needs to read."""

    table: str
    expectation: str
    column: str | None
    severity: str
    success: bool
    description: str
    unexpected_count: int = 0
    examples: list = field(default_factory=list)

    def line(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        count = f": {self.unexpected_count} unexpected" if self.unexpected_count else ""
        examples = f", e.g. {self.examples[:5]}" if self.examples else ""
        return f"[{self.severity}] {where} {self.description}{count}{examples}"


@dataclass
class ValidationReport:
    """The outcome of the validate step."""

    success: bool
    failures: list[Finding]
    warnings: list[Finding]
    evaluated: int
    data_docs: str | None

    def summary(self) -> str:
        """A readable list of what broke and what to look at."""
        head = "data validation passed" if self.success else "data validation FAILED"
        lines = [f"{head} ({self.evaluated} expectations)"]
        lines += [f"  {f.line()}" for f in self.failures + self.warnings]
        return "\n".join(lines)


def _expectations(params: ValidateParams, manifest: dict) -> dict[str, list]:
    """The suites, one per fact table, keyed by table name."""
    return {
        "images": _image_expectations(params, manifest),
        "class_counts": _count_expectations(params),
        "channel_stats": _channel_expectations(params),
    }


def _image_expectations(params: ValidateParams, manifest: dict) -> list:
    n_classes = len(manifest["class_names"])
    # The shape the ingest was asked for, not whatever the arrays happen to have.
    side = manifest.get("params", {}).get("image_size")
    height, width, channels = (side, side, 3) if side else manifest["image_shape"]
    return [
        gxe.ExpectColumnValuesToBeInSet(
            column="label",
            value_set=list(range(n_classes)),
            description=f"label within the {n_classes} classes",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="height", min_value=height, max_value=height, description=f"height is {height}"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="width", min_value=width, max_value=width, description=f"width is {width}"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="channels",
            min_value=channels,
            max_value=channels,
            description=f"{channels} channels",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="dtype", value_set=["uint8"], description="dtype uint8"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="std",
            min_value=params.min_image_std,
            description=f"not constant (pixel std >= {params.min_image_std})",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="crosses_test_boundary",
            value_set=[False],
            description="no image shared between train/validation and test",
        ),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["split", "sha256"],
            mostly=1.0 - params.max_duplicate_fraction,
            description="few exact duplicates within a split",
        ),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["split", "sha256"],
            severity=WARNING,
            description="no exact duplicates within a split",
        ),
    ]


def _count_expectations(params: ValidateParams) -> list:
    tolerance = params.class_balance_tolerance
    return [
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="count", column_B="manifest_count", description="counts equal the manifest's"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="count",
            min_value=params.min_images_per_class,
            description=f"every class has >= {params.min_images_per_class} images",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="balance_ratio",
            min_value=max(0.0, 1 - tolerance),
            max_value=1 + tolerance,
            description=f"class balance within +-{tolerance:.0%} of the split mean",
        ),
    ]


def _channel_expectations(params: ValidateParams) -> list:
    low_mean, high_mean = params.channel_mean_range
    low_std, high_std = params.channel_std_range
    return [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=1, description="per-channel statistics were computed"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="mean",
            min_value=low_mean,
            max_value=high_mean,
            description=f"channel mean in [{low_mean}, {high_mean}]",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="std",
            min_value=low_std,
            max_value=high_std,
            description=f"channel std in [{low_std}, {high_std}]",
        ),
    ]


_ID_COLUMNS = {
    "images": ["image_id"],
    "class_counts": ["split", "class_name"],
    "channel_stats": ["split", "channel"],
}


def _finding(table: str, result) -> Finding:
    config = result.expectation_config
    details = result.result or {}
    kwargs = config.kwargs
    column = (
        kwargs.get("column")
        or kwargs.get("column_A")
        or ("+".join(kwargs["column_list"]) if "column_list" in kwargs else None)
    )
    examples = (
        details.get("partial_unexpected_index_list") or details.get("partial_unexpected_list") or []
    )
    examples = [
        "/".join(str(v) for k, v in e.items() if k in _ID_COLUMNS[table])
        if isinstance(e, dict)
        else e
        for e in examples
    ]
    return Finding(
        table=table,
        expectation=config.type,
        column=column,
        severity=str(getattr(config, "severity", CRITICAL) or CRITICAL).split(".")[-1].lower(),
        success=bool(result.success),
        description=config.description or config.type,
        unexpected_count=int(details.get("unexpected_count") or 0),
        examples=examples[:EXAMPLES],
    )


def run_suites(
    tables: dict[str, pd.DataFrame], params: ValidateParams, manifest: dict, docs_dir: Path | None
) -> ValidationReport:
    """Run every suite with Great Expectations; build Data Docs into ``docs_dir``."""
    context = gx.get_context(mode="ephemeral")
    for site in list(context.list_data_docs_sites()):
        context.delete_data_docs_site(site)  # GX's default site would be built in the temp dir
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name=DOCS_SITE,
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    source = context.data_sources.add_pandas("facts")
    findings: list[Finding] = []
    for table, expectations in _expectations(params, manifest).items():
        batch_definition = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(
            "all"
        )
        suite = context.suites.add(gx.ExpectationSuite(name=f"{table}_suite"))
        for expectation in expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{table}_validation", data=batch_definition, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{table}_checkpoint",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[DOCS_SITE])]
                if docs_dir
                else [],
                result_format={
                    "result_format": "SUMMARY",
                    "unexpected_index_column_names": _ID_COLUMNS[table],
                    "partial_unexpected_count": EXAMPLES,
                },
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": tables[table]})
        for run_result in outcome.run_results.values():
            findings += [_finding(table, r) for r in run_result.results]
    failures = [f for f in findings if not f.success and f.severity == CRITICAL]
    warnings = [f for f in findings if not f.success and f.severity != CRITICAL]
    index = docs_dir / "index.html" if docs_dir else None
    return ValidationReport(
        success=not failures,
        failures=failures,
        warnings=warnings,
        evaluated=len(findings),
        data_docs=str(index) if index and index.exists() else None,
    )
