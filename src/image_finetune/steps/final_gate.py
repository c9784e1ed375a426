"""The ``gate`` stage: the final "meets requirements?" on the test evaluation, with a paired
McNemar test against the registry's champion where there is one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from image_finetune.config import Params
from image_finetune.errors import GateFailedError
from image_finetune.gate import Decision, decide
from image_finetune.registry.versions import champion_results
from image_finetune.stats import per_image_correct
from image_finetune.steps.layout import read_evaluation

log = logging.getLogger(__name__)


def final_gate(params: Params, evaluation: Path, out: Path) -> Decision:
    """Decide on the test evaluation in ``evaluation``; write the decision to ``out``.
    Raises GateFailedError (after writing it) when the model falls short."""
    metrics, probabilities, labels = read_evaluation(evaluation)
    champion = champion_results(params.registry, labels)
    decision = decide(
        metrics, params.gate, "test", per_image_correct(probabilities, labels), champion
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(decision.to_json(), indent=2) + "\n")
    log.info("final gate on test:\n  %s", "\n  ".join(decision.reasons))
    if not decision.passed:
        raise GateFailedError(
            "the model does not meet the requirements on test:\n  "
            + "\n  ".join(c.line for c in decision.failures)
        )
    return decision
