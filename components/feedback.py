"""The ``feedback`` step in the monitoring pipeline: export the labelled feedback the server
stored (its SQLite file on the feedback volume) for the monitor to count and the retraining
to train on; and, once that retraining has run to its end, move the store's watermark past
the labels it was given."""

from kfp.dsl import Dataset, Input, Output

from image_finetune.components.runtime import component


@component
def export_labelled_feedback(feedback_uri: str, labels: Output[Dataset]) -> int:
    """Write every labelled image of the store at ``feedback_uri`` as an image-folder tree
    (``train/<label>/...``) with the export's record; return how many are new since the last
    completed retraining."""
    from pathlib import Path

    from image_finetune.steps.feedback import export_feedback

    exported = export_feedback(feedback_uri, Path(labels.path))
    labels.metadata.update(
        images=exported["images"],
        new_since_retrain=exported["new_since_retrain"],
        classes=exported["classes"],
    )
    return int(exported["new_since_retrain"])


@component
def mark_feedback_used(feedback_uri: str, labels: Input[Dataset]) -> float:
    """A retraining given ``labels`` ran to its end: the store's watermark moves to the
    newest label exported (labels received since stay new); return the watermark."""
    from pathlib import Path

    from image_finetune.steps.feedback import mark_retrained

    return float(
        mark_retrained(feedback_uri, Path(labels.path), "the monitoring pipeline's retraining")[
            "watermark"
        ]
    )
