"""The retrain loop ("meets requirements?" -> no -> next rung), as ``dvc repro`` runs it.

Attempt k = train(rung k, warm start from k-1) -> evaluate(validation) -> gate.
The loop stops at the first attempt that passes; the KFP pipeline unrolls the
same attempts under ``dsl.If`` and calls the same three functions
(:func:`run_attempt` is their composition).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from image_finetune.config import Params
from image_finetune.data.canonical import load_split, read_manifest
from image_finetune.errors import GateFailedError
from image_finetune.evaluate import evaluate_model
from image_finetune.gate import Decision, decide, write_decision
from image_finetune.train import MODEL_FILE, train_rung

log = logging.getLogger(__name__)

SELECTED = "selected"


def run_attempt(
    params: Params, index: int, data_dir: Path, attempt_dir: Path, root: Path, cache_root: Path,
    warm_start: Path | None,
) -> Decision:
    """Train rung ``index``, evaluate it on validation, decide; write it all under attempt_dir."""
    rung = params.train.ladder[index]
    result = train_rung(params, index, data_dir, attempt_dir, root, cache_root, warm_start)
    validation = load_split(data_dir, "validation")
    metrics = evaluate_model(
        Path(result.model_path), validation.images, validation.labels,
        read_manifest(data_dir)["class_names"], params.evaluate, attempt_dir / "evaluation",
        f"Attempt {index} ({rung.name}) on validation", params.train.seed,
    )
    decision = decide(metrics, params.gate, "validation")
    write_decision(decision, attempt_dir / "decision.json")
    log.info("attempt %d (%s): %s\n  %s", index, rung.name,
             "PASSED" if decision.passed else "failed", "\n  ".join(decision.reasons))
    return decision


def write_combined_history(attempt_dirs: list[Path], path: Path) -> None:
    """One CSV of every attempt's epochs, numbered on a common ``step`` axis (a DVC plot)."""
    import csv

    rows = []
    for attempt, directory in enumerate(attempt_dirs):
        with (directory / "history.csv").open() as handle:
            for record in csv.DictReader(handle):
                rows.append({"step": len(rows), "attempt": attempt, **record})
    if not rows:
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run_ladder(
    params: Params, data_dir: Path, out_dir: Path, root: Path, cache_root: Path
) -> Path:
    """Climb the ladder until an attempt passes; return the selected model's path.

    Writes ``out_dir/attempt_<k>/`` for every attempt that ran, ``summary.json``,
    and ``selected/model.keras``. Raises GateFailedError when every rung fails.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    attempts, warm_start, winner = [], None, None
    for index, rung in enumerate(params.train.ladder):
        attempt_dir = out_dir / f"attempt_{index}"
        decision = run_attempt(params, index, data_dir, attempt_dir, root, cache_root, warm_start)
        metrics = json.loads((attempt_dir / "evaluation" / "metrics.json").read_text())
        attempts.append({"index": index, "rung": rung.name, "passed": decision.passed,
                         "val_accuracy": metrics["accuracy"], "val_macro_f1": metrics["macro_f1"],
                         "reasons": decision.reasons})
        if decision.passed:
            winner = index
            break
        warm_start = attempt_dir / MODEL_FILE
    summary = {"attempts": attempts, "selected": winner, "rungs": len(params.train.ladder)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_combined_history([out_dir / f"attempt_{a['index']}" for a in attempts],
                           out_dir / "history.csv")
    selected = out_dir / SELECTED
    shutil.rmtree(selected, ignore_errors=True)
    if winner is None:
        lines = [f"attempt {a['index']} ({a['rung']}): " + "; ".join(
            r for r in a["reasons"] if r.startswith("FAIL")) for a in attempts]
        raise GateFailedError("every rung of the ladder failed the gate:\n  " + "\n  ".join(lines))
    selected.mkdir()
    shutil.copy2(out_dir / f"attempt_{winner}" / MODEL_FILE, selected / MODEL_FILE)
    (selected / "attempt.json").write_text(json.dumps(attempts[-1], indent=2) + "\n")
    return selected / MODEL_FILE
