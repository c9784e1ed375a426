"""Reading what a kfp.local run left in its pipeline root (both runners write the same)."""

import json

from image_finetune.pipelines.local import LocalRun


def produced(run: LocalRun, output: str) -> list[dict]:
    """Metadata of every artifact named ``output`` that the run's finished tasks produced."""
    found = []
    for record in run.pipeline_root.rglob("executor_output.json"):
        artifacts = json.loads(record.read_text()).get("artifacts", {})
        found += [
            {**a.get("metadata", {}), "uri": a["uri"]}
            for a in artifacts.get(output, {}).get("artifacts", [])
        ]
    return found


def decisions(run: LocalRun) -> list[dict]:
    """Every gate decision file the run wrote, including a failed task's."""
    return [json.loads(path.read_text()) for path in run.pipeline_root.rglob("decision")]


def executed(run: LocalRun) -> set[str]:
    """The tasks that ran to completion in this run (cache hits write nothing here)."""
    return {path.parent.name for path in run.pipeline_root.rglob("executor_output.json")}
