"""The exit task: records how the run ended, on success and on failure."""

from kfp.dsl import Markdown, Output, PipelineTaskFinalStatus

from image_finetune.components.runtime import component


@component
def record_status(status: PipelineTaskFinalStatus, run_status: Output[Markdown]) -> None:
    """Write the run's final state and, if it failed, the error (``dsl.ExitHandler`` task)."""
    from pathlib import Path

    from image_finetune.steps.record_status import record_status

    facts = record_status(
        status.state, status.pipeline_job_resource_name, status.error_message, Path(run_status.path)
    )
    run_status.metadata.update(facts)
    print(f"pipeline {status.state}: {facts['error'] or 'no error'}")
