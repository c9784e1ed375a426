"""The "meets requirements?" decisions: one gate per attempt of the retrain loop (on
validation), the hand-over of the passing classifier, and the final gate (on test)."""

from typing import NamedTuple

from kfp.dsl import Artifact, Input, Model, Output

from components.runtime import read_params, step


@step
def gate_attempt(
    index: int, last: bool, gate: str, evaluation: Input[Artifact], decision: Output[Artifact]
) -> NamedTuple("Verdict", [("passed", bool)]):
    """Decide on an attempt's validation results; ``passed`` says whether it met them.

    The pipeline retrains with the next rung when an attempt fails. The last rung has no
    next: its failure ends the run with the reasons (as ``dvc repro`` does).
    """
    import json
    from pathlib import Path

    from image_finetune.config import GateParams
    from image_finetune.errors import GateFailedError
    from image_finetune.gate import decide, write_decision

    metrics = json.loads((Path(evaluation.path) / "details.json").read_text())
    verdict = decide(metrics, GateParams.model_validate_json(gate), "validation")
    write_decision(verdict, Path(decision.path))
    decision.metadata.update(split="validation", rung=index, passed=verdict.passed)
    print(f"rung {index}: {'PASSED' if verdict.passed else 'failed'}\n  "
          + "\n  ".join(verdict.reasons))
    if last and not verdict.passed:
        raise GateFailedError(
            f"every rung of the ladder failed the gate; the last, rung {index}:\n  "
            + "\n  ".join(r for r in verdict.reasons if r.startswith("FAIL")))
    return (verdict.passed,)


@step
def select_classifier(classifier: Input[Model], winner: Output[Model]) -> None:
    """Hand the classifier that passed its gate on (``dsl.OneOf`` collects it from here)."""
    import shutil

    shutil.copytree(classifier.path, winner.path)
    winner.metadata.update(classifier.metadata)


@step
def final_gate(
    gate: str, registry: str, train: str, evaluation: Input[Artifact],
    decision: Output[Artifact],
) -> None:
    """The final decision on the test evaluation: thresholds, and a McNemar test against the
    registry's champion where there is one. Fails the run when the model falls short."""
    from pathlib import Path

    from image_finetune.errors import GateFailedError
    from image_finetune.gate import final_decision, write_decision

    params = read_params(gate=gate, registry=registry, train=train)
    verdict = final_decision(params, Path(evaluation.path))
    write_decision(verdict, Path(decision.path))
    decision.metadata.update(split="test", passed=verdict.passed, promote=verdict.promote)
    print("\n".join(verdict.reasons))
    if not verdict.passed:
        raise GateFailedError("the model does not meet the requirements on test")
