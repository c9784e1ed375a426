"""The ``gate-attempt`` step: "meets requirements?" on one attempt's validation results.

Each decision file carries the loop's record so far (``ladder``), and the next attempt's
gate reads the previous decision: so the Kubeflow pipeline, which gates each unrolled
attempt in its own task, fails the run with every attempt's reasons, as ``dvc repro`` does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from image_finetune.config import Params
from image_finetune.gate import Decision, decide, undecided
from image_finetune.ladder import AttemptRecord, ladder_verdict
from image_finetune.steps.layout import read_evaluation, read_records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttemptVerdict:
    """An attempt's decision, the loop's record including it, and the winner if any."""

    decision: Decision
    records: list[AttemptRecord]
    winner: int | None


def gate_attempt(
    params: Params,
    index: int,
    rung: str,
    rungs: int,
    evaluation: Path,
    out: Path,
    previous: Path | None = None,
) -> AttemptVerdict:
    """Decide on attempt ``index`` (rung ``rung`` of ``rungs``) from its validation
    evaluation; write the decision to ``out``. After the last rung's failure, raise
    GateFailedError with every attempt's failed checks (the decision is written first)."""
    metrics, _, _ = read_evaluation(evaluation)
    decision = decide(metrics, params.gate, "validation")
    records = [*read_records(previous), AttemptRecord.of(index, rung, decision, metrics)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                **decision.to_json(),
                "index": index,
                "rung": rung,
                "ladder": [r.to_json() for r in records],
            },
            indent=2,
        )
        + "\n"
    )
    log.info(
        "attempt %d (%s): %s\n  %s",
        index,
        rung,
        "PASSED" if decision.passed else "failed",
        "\n  ".join(decision.reasons),
    )
    if undecided(metrics, params.gate.min_accuracy):
        log.warning(
            "attempt %d (%s): the accuracy threshold %.4g lies inside the accuracy's "
            "95%% interval on %s: the validation split is too small to decide; "
            "raise data.min_validation_per_class or bring more images",
            index,
            rung,
            params.gate.min_accuracy,
            evaluation,
        )
    return AttemptVerdict(decision, records, ladder_verdict(records, rungs))
