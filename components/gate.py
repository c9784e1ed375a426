"""The "meets requirements?" decisions: one gate per attempt of the retrain loop (on
validation), the hand-over of the passing classifier, and the final gate (on test)."""

from typing import NamedTuple

from kfp.dsl import Artifact, Input, Model, Output

from image_finetune.components.runtime import component, read_params


@component
def gate_attempt(
    index: int,
    rung: str,
    rungs: int,
    gate: dict,
    evaluation: Input[Artifact],
    decision: Output[Artifact],
    previous: Input[Artifact] = None,
) -> NamedTuple("Verdict", [("passed", bool)]):  # type: ignore[valid-type]
    """Decide on an attempt's validation results; ``passed`` says whether it met them.

    ``previous`` is the previous attempt's decision (the loop's record so far). The
    pipeline retrains with the next rung when an attempt fails; the last rung's failure
    fails the run with every attempt's reasons (as ``dvc repro`` does).
    """
    from pathlib import Path

    from image_finetune.steps.gate_attempt import gate_attempt

    verdict = gate_attempt(
        read_params(gate=gate),
        index,
        rung,
        rungs,
        Path(evaluation.path),
        Path(decision.path),
        Path(previous.path) if previous else None,
    )
    decision.metadata.update(split="validation", rung=index, passed=verdict.decision.passed)
    print("\n".join(verdict.decision.reasons))
    return (verdict.decision.passed,)


@component
def select_classifier(classifier: Input[Model], winner: Output[Model]) -> None:
    """Hand the classifier that passed its gate on (``dsl.OneOf`` collects it from here)."""
    from pathlib import Path

    from image_finetune.steps.layout import MODEL_FILE
    from image_finetune.steps.select import select_classifier

    select_classifier(Path(classifier.path) / MODEL_FILE, Path(winner.path))
    winner.metadata.update(classifier.metadata)


@component
def final_gate(
    gate: dict,
    registry: dict,
    evaluation: Input[Artifact],
    decision: Output[Artifact],
) -> None:
    """The final decision on the test evaluation: thresholds, and a McNemar test against the
    registry's champion where there is one. Fails the run when the model falls short."""
    from pathlib import Path

    from image_finetune.steps.final_gate import final_gate

    verdict = final_gate(
        read_params(gate=gate, registry=registry), Path(evaluation.path), Path(decision.path)
    )
    decision.metadata.update(split="test", passed=verdict.passed, promote=verdict.promote)
    print("\n".join(verdict.reasons))
