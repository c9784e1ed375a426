"""What ties a registered version to its code, data and pipeline run."""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path


def git_commit(root: Path) -> str:
    """The current git commit (``unknown`` outside a repository)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def new_pipeline_run_id(prefix: str = "dvc") -> str:
    """A unique, sortable id for one pipeline run."""
    return f"{prefix}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


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
    pipeline_run_id: str, params_sha256: str, data_manifest_sha256: str, class_names: list[str],
    extra: dict | None, image_fit: str,
) -> dict[str, str]:
    """The tags every registered version carries: lineage, and what a client of the model
    needs to use it as it was trained (class names; how images of another size are fitted)."""
    import json

    return {"pipeline_run_id": pipeline_run_id, "params_sha256": params_sha256,
            "data_manifest_sha256": data_manifest_sha256, **(extra or {}),
            "class_names": json.dumps(class_names), "image_fit": image_fit}
