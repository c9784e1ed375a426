"""What ties a registered version to its code, data and pipeline run."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

# MLflow's standard tag for the code's commit: its UI links a run to its source by it.
GIT_COMMIT_TAG = "mlflow.source.git.commit"
# What `dvc exp run` sets in the environment of the stages it runs.
DVC_EXPERIMENT_ENV = "DVC_EXP_NAME"
DVC_BASELINE_ENV = "DVC_EXP_BASELINE_REV"


def git_commit(root: Path) -> str:
    """The current git commit (``unknown`` outside a repository)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_experiment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The DVC experiment this process is a stage of, as tags: its name and the commit it
    branches from (``dvc exp run`` in the workspace, ``--temp`` or a queue); empty outside
    one."""
    name = environ.get(DVC_EXPERIMENT_ENV, "")
    if not name:
        return {}
    return {"dvc_experiment": name, "dvc_experiment_baseline": environ.get(DVC_BASELINE_ENV, "")}


def inputs_run_id(files: list[Path], params_sha256: str, prefix: str = "dvc") -> str:
    """A pipeline run id determined by what is registered (the files' bytes and the
    params): registering the same outputs again, after a crash or on purpose, is the same
    run and yields the same version."""
    import hashlib

    digest = hashlib.sha256(params_sha256.encode())
    for path in files:
        digest.update(path.read_bytes())
    return f"{prefix}-{digest.hexdigest()[:20]}"


def lineage_tags(
    pipeline_run_id: str,
    params_sha256: str,
    data_manifest_sha256: str,
    class_names: list[str],
    extra: dict | None,
    image_fit: str,
) -> dict[str, str]:
    """The tags every registered version carries: lineage, and what a client of the model
    needs to use it as it was trained (class names; how images of another size are fitted)."""
    import json

    extra = extra or {}
    commit = {GIT_COMMIT_TAG: extra["git_commit"]} if "git_commit" in extra else {}
    return {
        "pipeline_run_id": pipeline_run_id,
        "params_sha256": params_sha256,
        "data_manifest_sha256": data_manifest_sha256,
        **extra,
        **commit,
        "class_names": json.dumps(class_names),
        "image_fit": image_fit,
    }
