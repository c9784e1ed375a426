"""The monitor component compiles into a pipeline that branches on its verdict: the
outputs the monitoring pipeline reads, and the optional labels input."""

from kfp import compiler, dsl
from kfp.dsl import Artifact

from image_finetune.components import monitor_drift


def test_the_monitor_component_gives_the_verdict_the_pipeline_branches_on(tmp_path):
    @dsl.pipeline(name="monitor-then-maybe-retrain")
    def monitoring(evaluate: dict, registry: dict, windows: str):
        recorded = dsl.importer(artifact_uri=windows, artifact_class=Artifact)
        checked = monitor_drift(evaluate=evaluate, registry=registry, source=recorded.output)
        with dsl.If(checked.outputs["retrain"] == True):  # noqa: E712
            monitor_drift(evaluate=evaluate, registry=registry, source=recorded.output)

    compiler.Compiler().compile(monitoring, str(tmp_path / "pipeline.yaml"))
    spec = monitor_drift.component_spec
    assert set(spec.outputs) >= {
        "drift",
        "labels_count",
        "retrain",
        "model_version",
        "report",
        "drift_report",
        "metrics",
    }
    assert spec.inputs["labels"].optional and not spec.inputs["source"].optional
