"""The ``select`` step: hand the classifier that passed its gate on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from image_finetune.steps.layout import ATTEMPT_FILE, MODEL_FILE


def select_classifier(model: Path, out: Path, attempt: dict | None = None) -> Path:
    """Make ``out`` hold just ``model`` (and, given, the attempt's record as attempt.json);
    return the model's new path."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copy2(model, out / MODEL_FILE)
    if attempt is not None:
        (out / ATTEMPT_FILE).write_text(json.dumps(attempt, indent=2) + "\n")
    return out / MODEL_FILE
