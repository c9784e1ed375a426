"""The exit task: records how the run ended, on success and on failure."""

from kfp.dsl import Markdown, Output, PipelineTaskFinalStatus

from components.runtime import step


@step
def record_status(status: PipelineTaskFinalStatus, run_status: Output[Markdown]) -> None:
    """Write the run's final state and, if it failed, the error (``dsl.ExitHandler`` task)."""
    from pathlib import Path

    facts = {"state": status.state, "run": status.pipeline_job_resource_name,
             "error": status.error_message or ""}
    run_status.metadata.update(facts)
    Path(run_status.path).write_text(
        f"# Pipeline {status.state}\n\n" + "\n".join(f"- {k}: {v}" for k, v in facts.items())
        + "\n")
    print(f"pipeline {status.state}: {facts['error'] or 'no error'}")
