"""Kubeflow Pipelines components: one thin wrapper per step.

Each calls the same library function as its DVC stage and ``image-finetune`` command; the
component only moves artifacts in and out. Every step receives just the params.yaml sections
it reads (as the DVC stage lists them), as mappings validated by ``check-params``, so
changing a value re-runs only the steps that read it: KFP's cache key covers a task's inputs.
"""

from image_finetune.components.augment import preview_augmentation
from image_finetune.components.evaluate import evaluate_classifier
from image_finetune.components.export_engine import export_engine
from image_finetune.components.feedback import export_labelled_feedback, mark_feedback_used
from image_finetune.components.gate import final_gate, gate_attempt, select_classifier
from image_finetune.components.ingest import ingest_data
from image_finetune.components.monitor import monitor_drift
from image_finetune.components.params import check_params, set_rung
from image_finetune.components.profile import profile_classifier
from image_finetune.components.register import register_classifier
from image_finetune.components.status import record_status
from image_finetune.components.train import train_rung
from image_finetune.components.train_rung_job import train_rung_job
from image_finetune.components.validate import validate_data

__all__ = [
    "check_params",
    "evaluate_classifier",
    "export_engine",
    "export_labelled_feedback",
    "final_gate",
    "gate_attempt",
    "ingest_data",
    "mark_feedback_used",
    "monitor_drift",
    "preview_augmentation",
    "profile_classifier",
    "record_status",
    "register_classifier",
    "select_classifier",
    "set_rung",
    "train_rung",
    "train_rung_job",
    "validate_data",
]
