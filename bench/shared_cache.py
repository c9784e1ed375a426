"""Benchmark: what a gate-only `dvc exp run --temp` costs after a workspace `dvc repro`, with
two versions of the code side by side in one run, on the same machine and data (the small real
subset of the e2e tests: 30 training and 10 test images per class, the two-rung ladder).

For each version: a fresh project from its tree, `dvc repro` in the workspace (which fills the
project's training cache), then `dvc exp run --temp -S gate.min_accuracy=0.26`. Prints each
command's wall time and, from the experiment's log, whether it embedded images or trained a
rung, or reused the finished attempts.

Usage: python bench/shared_cache.py --before DIR [--after DIR] [--per-class 30]
  DIR: a tree of the project's code, e.g. `git archive <commit> | tar -x -C DIR`
  (--after: this checkout by default).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import (  # noqa: E402  (the e2e tests' subset and small-run params)
    CIFAR_TARBALL,
    NO_TOP_WEIGHTS,
    PASSABLE_GATE,
    extract_subset,
    small_run_params,
)

VENV_BIN = ROOT / ".venv" / "bin"


def tree_files(tree: Path) -> list[str]:
    """The project's files in ``tree``: git's tracked files, or every file of an archive."""
    if (tree / ".git").exists():
        listed = (
            subprocess.run(["git", "ls-files", "-z"], cwd=tree, capture_output=True, check=True)
            .stdout.decode()
            .split("\0")
        )
        return [name for name in listed if name and (tree / name).is_file()]
    return [str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()]


def project_from(tree: Path, work: Path, folder: Path) -> Path:
    """A committed project made of ``tree``'s files with small-run params."""
    project = work / "project"
    for name in tree_files(tree):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree / name, project / name)
    params = small_run_params(folder, NO_TOP_WEIGHTS, PASSABLE_GATE)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "baseline"]):
        subprocess.run(
            ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", *command],
            cwd=project,
            check=True,
        )
    return project


def timed_dvc(project: Path, tree: Path, *args: str) -> tuple[float, str]:
    """(wall seconds, log) of one dvc command run with ``tree``'s code."""
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "PYTHONPATH": f"{tree / 'src'}:{tree}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    for leaking in (
        "IMAGE_FINETUNE_CACHE",
        "IMAGE_FINETUNE_DATA",
        "IMAGE_FINETUNE_WEIGHTS",
        "MLFLOW_TRACKING_URI",
    ):
        env.pop(leaking, None)
    start = time.perf_counter()
    result = subprocess.run(
        [str(VENV_BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    log = result.stdout + result.stderr
    if result.returncode:
        sys.exit(f"dvc {' '.join(args)} failed ({result.returncode}):\n{log[-3000:]}")
    return seconds, log


def measure(label: str, tree: Path, folder: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"shared-cache-{label}-") as work:
        project = project_from(tree, Path(work), folder)
        repro, _ = timed_dvc(project, tree, "repro")
        experiment, log = timed_dvc(
            project, tree, "exp", "run", "--temp", "-n", "gate-only", "-S", "gate.min_accuracy=0.26"
        )
    return {
        "label": label,
        "repro": repro,
        "experiment": experiment,
        "embedded": "embed train" in log,
        "trained": log.count(" mode="),
        "reused": log.count("reusing the finished attempt"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=ROOT)
    parser.add_argument("--per-class", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shared-cache-data-") as data:
        folder = extract_subset(CIFAR_TARBALL, Path(data), {"train": args.per_class, "test": 10})
        rows = [
            measure(label, tree.resolve(), folder)
            for label, tree in (("before", args.before), ("after", args.after))
        ]
    print(
        f"{'code':<8}{'dvc repro s':>13}{'exp --temp s':>14}  embedded  rungs trained  "
        "attempts reused"
    )
    for row in rows:
        print(
            f"{row['label']:<8}{row['repro']:>13.1f}{row['experiment']:>14.1f}  "
            f"{'yes' if row['embedded'] else 'no':<8}  {row['trained']:<13}  {row['reused']}"
        )


if __name__ == "__main__":
    main()
