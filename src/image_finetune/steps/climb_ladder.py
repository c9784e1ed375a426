"""The ``train`` stage of ``dvc repro``: the retrain loop. Attempt k = train rung k (warm
start from k-1) -> evaluate on validation -> gate, until an attempt passes; every
attempt's evidence stays in ``models/attempt_<k>/``, the loop's record in
``summary.json`` and its epochs in ``history.csv``. The Kubeflow pipeline unrolls the
same three steps per rung."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from image_finetune.config import Params
from image_finetune.errors import DataValidationError, MissingInputError
from image_finetune.ladder import AttemptRecord, ladder_metrics
from image_finetune.steps import evaluate, gate_attempt, select, train_rung
from image_finetune.steps.layout import (
    DECISION_FILE,
    EVALUATION,
    HISTORY_FILE,
    MODEL_FILE,
    SELECTED,
    SUMMARY_FILE,
    attempt_folder,
    read_records,
    write_metrics_file,
)
from image_finetune.steps.live_metrics import live_metrics
from image_finetune.training.distribute import refuse_workers


def climb_ladder(
    params: Params,
    data: Path,
    validation: Path,
    out: Path,
    cache: Path,
    root: Path,
    metrics: Path | None = None,
    live: Path | None = None,
) -> Path:
    """Climb ``train.ladder`` on ``data`` (validated: ``validation`` is the validate step's
    result); return the selected model's path. Raises GateFailedError when every rung fails.
    ``metrics``: where the loop's figures go as one flat JSON object (kept in git by DVC);
    ``live``: DVCLive's folder, every attempt's epochs on one step axis as they happen."""
    refuse_workers(params.train, "the ladder (train)")
    _require_validated(validation)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / SELECTED, ignore_errors=True)
    previous = current = None
    logger = live_metrics(live)
    try:
        for index in range(len(params.train.ladder)):
            current = attempt_folder(out, index) / DECISION_FILE
            verdict = _attempt(params, index, data, current.parent, cache, root, previous, logger)
            previous = current
            if verdict.winner is not None:
                break
    finally:  # the loop's record, also when it failed (the last gate raises once written)
        if logger is not None:
            logger.close()
        records = read_records(current if current and current.exists() else previous)
        _write_summary(out, records, len(params.train.ladder))
        if metrics is not None:
            write_metrics_file(metrics, ladder_metrics(records, len(params.train.ladder)))
    winner = records[-1]
    return select.select_classifier(
        attempt_folder(out, winner.index) / MODEL_FILE, out / SELECTED, winner.to_json()
    )


def _attempt(
    params, index, data, folder, cache, root, previous, logger
) -> gate_attempt.AttemptVerdict:
    rung = params.train.ladder[index]
    (folder / DECISION_FILE).unlink(missing_ok=True)  # never mistake an old run's decision
    warm_start = previous.parent / MODEL_FILE if previous else None
    result = train_rung.train_rung(
        params, index, data, folder, cache, root, warm_start, logger.callbacks() if logger else ()
    )
    if logger is not None:
        logger.attempt_done(folder / HISTORY_FILE)
    evaluate.evaluate_classifier(
        params,
        data,
        Path(result.model_path),
        folder / EVALUATION,
        "validation",
        f"Attempt {index} ({rung.name}) on validation",
    )
    return gate_attempt.gate_attempt(
        params,
        index,
        rung.name,
        len(params.train.ladder),
        folder / EVALUATION,
        folder / DECISION_FILE,
        previous,
    )


def _require_validated(result: Path) -> None:
    if not result.exists():
        raise MissingInputError(f"{result}: no data validation result (run the validate step)")
    if not json.loads(result.read_text()).get("success"):
        raise DataValidationError(f"{result}: the data failed validation; training refused")


def _write_summary(out: Path, records: list[AttemptRecord], rungs: int) -> None:
    winner = next((r.index for r in records if r.passed), None)
    attempts = [r.to_json() for r in records]
    (out / SUMMARY_FILE).write_text(
        json.dumps({"attempts": attempts, "selected": winner, "rungs": rungs}, indent=2) + "\n"
    )
    _combine_histories([attempt_folder(out, r.index) for r in records], out / HISTORY_FILE)


def _combine_histories(attempt_dirs: list[Path], path: Path) -> None:
    """One CSV of every attempt's epochs on a common ``step`` axis (a DVC plot)."""
    rows: list[dict[str, object]] = []
    for attempt, directory in enumerate(attempt_dirs):
        with (directory / HISTORY_FILE).open() as handle:
            rows += [
                {"step": len(rows) + i, "attempt": attempt, **record}
                for i, record in enumerate(csv.DictReader(handle))
            ]
    if rows:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
