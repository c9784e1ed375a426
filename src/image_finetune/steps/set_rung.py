"""The ``set-rung`` step, Kubeflow's only: one rung's epochs and learning rate (typed pipeline
parameters) put back into the train section. The pipeline runs one per rung, in a chain,
before ``check-params``: a component's inputs are fixed, the number of rungs it was compiled
for is not."""

from __future__ import annotations

from image_finetune.knobs import merge_knobs, rung_knob


def set_rung(train: dict, index: int, epochs: int, learning_rate: float) -> dict:
    """``train`` (a section as a mapping parameter) with rung ``index``'s knobs in place."""
    knobs = {rung_knob(index, "epochs"): epochs, rung_knob(index, "learning_rate"): learning_rate}
    return merge_knobs({"train": train}, knobs)["train"]
