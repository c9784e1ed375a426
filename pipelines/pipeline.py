"""The Kubeflow pipeline: the DAG of ``dvc repro``, built from the components in components/.

    check params -> ingest -> validate -> augment -> attempt 0
      -> dsl.OneOf(the winning classifier) -> evaluate(test) -> final gate -> register/promote
    attempt k:  train(rung k, warm start from rung k-1) -> evaluate(validation) -> gate
                dsl.If(gate failed): attempt k+1      dsl.Else: hand the classifier on
    the last rung has no next attempt: its gate fails the run, and nothing is registered
    dsl.ExitHandler: record the final status, on success and on failure

KFP has no cycles, so the retrain loop is unrolled at compile time: one attempt per rung of
``train.ladder``. Every attempt after the first is a sub-pipeline, because a ``dsl.OneOf``
collects only from the branches of one ``dsl.If``/``dsl.Else`` group and cannot be nested:
each attempt resolves its own group and returns the winner as an ordinary output.

The pipeline's parameters are params.yaml's sections, as JSON text, with the file it was
compiled from as their defaults, and ``cache_dir``; each step receives only the sections it
reads, so KFP's cache re-runs just the steps whose sections changed.
"""

import json
from dataclasses import dataclass, field

from kfp import compiler, dsl
from kfp.dsl import Dataset, Input, Model
from kfp.dsl.graph_component import GraphComponent
from kfp.dsl.pipeline_channel import PipelineChannel
from kfp.dsl.pipeline_task import PipelineTask

from components import (
    check_params,
    evaluate_classifier,
    final_gate,
    gate_attempt,
    ingest_data,
    preview_augmentation,
    record_status,
    register_classifier,
    select_classifier,
    train_rung,
    validate_data,
)
from components.runtime import configured_image, cpu_image, gpu_image
from image_finetune.config import Params

PIPELINE_NAME = "image-finetune"
# The sections an attempt (train, evaluate on validation, gate) reads.
ATTEMPT_SECTIONS = ("data", "model", "train", "augment", "evaluate", "gate")


@dataclass(frozen=True)
class Deployment:
    """Where the steps run: one image setting (tags ``-cpu`` and ``-gpu``) and the GPUs of
    each training task (0: train on the CPU image)."""

    image: str = field(default_factory=configured_image)
    gpus: int = 1
    accelerator: str = "nvidia.com/gpu"

    def on_cpu(
        self, task: PipelineTask, cpu: str, memory: str, *, retries: int = 0, cache: bool = True
    ) -> PipelineTask:
        """Place a step on the CPU image with its requests, retries and caching."""
        task.set_container_image(cpu_image(self.image))
        task.set_cpu_request(cpu).set_memory_request(memory).set_caching_options(cache)
        if retries:
            task.set_retry(retries, backoff_duration="30s", backoff_factor=2.0)
        return task

    def for_training(self, task: PipelineTask) -> PipelineTask:
        """Place a training step: the GPU image and accelerator, or the CPU image."""
        self.on_cpu(task, "4", "16G")
        if self.gpus:
            task.set_container_image(gpu_image(self.image))
            task.set_accelerator_type(self.accelerator).set_accelerator_limit(self.gpus)
        return task


def section_arguments(params: Params) -> dict[str, str]:
    """The pipeline's arguments for ``params``: each section as JSON text (a JSON string
    keeps the ``null`` values that a KFP struct parameter's default cannot hold)."""
    return {name: json.dumps(section)
            for name, section in params.model_dump(mode="json", by_alias=True).items()}


def build_pipeline(
    params: Params, deployment: Deployment | None = None, git_commit: str = "unknown"
) -> GraphComponent:
    """The pipeline for ``params``: one attempt per rung, its sections as the parameters'
    defaults. ``git_commit`` (of the pipeline's source) tags registered models."""
    deployment = deployment or Deployment()
    defaults = section_arguments(params)
    ladder = params.train.ladder
    last = len(ladder) - 1
    retries: dict[int, GraphComponent] = {}

    def attempt(
        index: int, sections: dict, dataset: PipelineChannel, cache_dir: PipelineChannel,
        warm_start: PipelineChannel | None = None, after: tuple[PipelineTask, ...] = (),
    ) -> tuple[PipelineChannel, PipelineTask]:
        """Train, evaluate and gate rung ``index`` and what follows; return the winning
        classifier and this rung's gate."""
        rung = ladder[index]
        start = {"warm_start": warm_start} if warm_start is not None else {}
        trained = deployment.for_training(train_rung(
            index=index, data=sections["data"], model=sections["model"],
            train=sections["train"], augment=sections["augment"], cache_dir=cache_dir,
            dataset=dataset, **start,
        )).set_display_name(f"train rung {index} ({rung.name})").after(*after)
        evaluated = deployment.on_cpu(evaluate_classifier(
            split="validation", evaluate=sections["evaluate"], train=sections["train"],
            dataset=dataset, classifier=trained.outputs["classifier"],
        ), "4", "8G").set_display_name(f"evaluate rung {index} on validation")
        gated = deployment.on_cpu(gate_attempt(
            index=index, last=index == last, gate=sections["gate"],
            evaluation=evaluated.outputs["evaluation"],
        ), "500m", "1G").set_display_name(f"gate rung {index}")
        if index == last:
            return trained.outputs["classifier"], gated
        with dsl.If(gated.outputs["passed"] == False, name=f"rung-{index}-failed"):  # noqa: E712
            retried = retries[index + 1](
                **{name: sections[name] for name in ATTEMPT_SECTIONS}, cache_dir=cache_dir,
                dataset=dataset, warm_start=trained.outputs["classifier"],
            ).set_display_name(f"retrain with rung {index + 1} ({ladder[index + 1].name})")
        with dsl.Else(name=f"rung-{index}-passed"):
            selected = deployment.on_cpu(select_classifier(
                classifier=trained.outputs["classifier"]), "500m", "1G",
            ).set_display_name(f"hand rung {index} on")
        return dsl.OneOf(retried.output, selected.outputs["winner"]), gated

    def attempt_pipeline(index: int) -> GraphComponent:
        @dsl.pipeline(name=f"attempt-{index}",
                      description=f"Rung {index} ({ladder[index].name}), warm-started from "
                                  f"rung {index - 1}, and the attempts after it.")
        def retry(data: str, model: str, train: str, augment: str, evaluate: str,
                  gate: str, cache_dir: str, dataset: Input[Dataset],
                  warm_start: Input[Model]) -> Model:
            sections = {"data": data, "model": model, "train": train, "augment": augment,
                        "evaluate": evaluate, "gate": gate}
            winner, _ = attempt(index, sections, dataset, cache_dir, warm_start)
            return winner

        return retry

    for index in range(last, 0, -1):  # each attempt refers to the next, so build from the end
        retries[index] = attempt_pipeline(index)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Fine-tune a pretrained CNN: ingest, validate, augment, climb the ladder of "
                    "training configurations until one passes the gate, evaluate on test, "
                    "register and promote in MLflow.",
    )
    def image_finetune(
        data: str = defaults["data"],
        validate: str = defaults["validate"],
        augment: str = defaults["augment"],
        model: str = defaults["model"],
        train: str = defaults["train"],
        evaluate: str = defaults["evaluate"],
        gate: str = defaults["gate"],
        registry: str = defaults["registry"],
        cache_dir: str = "",
    ) -> None:
        sections = {"data": data, "validate": validate, "augment": augment, "model": model,
                    "train": train, "evaluate": evaluate, "gate": gate, "registry": registry}
        status = deployment.on_cpu(record_status(), "100m", "256M", cache=False)
        with dsl.ExitHandler(status.set_display_name("record the final status"), "fine-tune"):
            checked = deployment.on_cpu(check_params(rungs=len(ladder), **sections),
                                        "100m", "512M").set_display_name("check params")
            ingested = deployment.on_cpu(ingest_data(data=data), "2", "4G", retries=2)
            ingested.set_display_name("ingest").after(checked)
            dataset = ingested.outputs["dataset"]
            validated = deployment.on_cpu(validate_data(validate=validate, dataset=dataset),
                                          "2", "8G").set_display_name("validate the data")
            previewed = deployment.on_cpu(preview_augmentation(
                augment=augment, train=train, dataset=dataset), "1", "2G",
            ).set_display_name("preview the augmentation").after(validated)
            winner, first_gate = attempt(0, sections, dataset, cache_dir, after=(previewed,))
            tested = deployment.on_cpu(evaluate_classifier(
                split="test", evaluate=evaluate, train=train, dataset=dataset,
                classifier=winner,
            ), "4", "8G").set_display_name("evaluate the winner on test").after(first_gate)
            # The champion changes between runs: the final gate and registration never cache.
            decided = deployment.on_cpu(final_gate(
                gate=gate, registry=registry, train=train,
                evaluation=tested.outputs["evaluation"],
            ), "1", "2G", retries=2, cache=False).set_display_name("final gate on test")
            deployment.on_cpu(register_classifier(
                **sections, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                lineage={"git_commit": git_commit, "orchestrator": "kubeflow"},
                classifier=winner, dataset=dataset, evaluation=tested.outputs["evaluation"],
                decision=decided.outputs["decision"],
            ), "2", "4G", retries=2, cache=False).set_display_name("register and promote")

    return image_finetune


def compile_pipeline(
    params: Params, package_path: str, deployment: Deployment | None = None,
    git_commit: str = "unknown",
) -> None:
    """Write the pipeline YAML that the KFP UI uploads and ``kfp.Client`` submits."""
    compiler.Compiler().compile(build_pipeline(params, deployment, git_commit), package_path)
