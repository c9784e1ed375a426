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
from kfp.dsl import Artifact, Dataset, Input, Model
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
ATTEMPT_SECTIONS = ("model", "train", "augment", "evaluate", "gate")
DESCRIPTION = ("Fine-tune a pretrained CNN: ingest, validate, augment, climb the ladder of "
               "training configurations until one passes the gate, evaluate on test, register "
               "and promote in MLflow.")


@dataclass(frozen=True)
class Deployment:
    """Where the steps run: one image setting (tags ``-cpu`` and ``-gpu``) and the GPUs of
    each training task (0: train on the CPU image)."""

    image: str = field(default_factory=configured_image)
    gpus: int = 1
    accelerator: str = "nvidia.com/gpu"

    @property
    def cpu_image(self) -> str:
        return cpu_image(self.image)

    def on_cpu(
        self, task: PipelineTask, cpu: str, memory: str, *, retries: int = 0, cache: bool = True
    ) -> PipelineTask:
        """Place a step on the CPU image with its requests, retries and caching."""
        task.set_container_image(self.cpu_image)
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


class Ladder:
    """The retrain loop, unrolled: attempt k trains rung k (warm-started from k-1), evaluates
    it on validation and gates it; under ``dsl.If(failed)`` attempt k+1 follows as a
    sub-pipeline, under ``dsl.Else`` the classifier is handed on; ``dsl.OneOf`` joins them."""

    def __init__(self, params: Params, deployment: Deployment):
        self.rungs = params.train.ladder
        self.deployment = deployment
        self.retries: dict[int, GraphComponent] = {}
        for index in range(len(self.rungs) - 1, 0, -1):  # each refers to the next: build back
            self.retries[index] = self._sub_pipeline(index)

    def attempt(
        self, index: int, sections: dict, dataset: PipelineChannel, cache_dir: PipelineChannel,
        warm_start: PipelineChannel | None = None, previous: PipelineChannel | None = None,
        after: tuple[PipelineTask, ...] = (),
    ) -> tuple[PipelineChannel, PipelineTask]:
        """Rung ``index`` and the attempts after it; return the winning classifier and this
        rung's gate."""
        trained, gated = self._train_evaluate_gate(index, sections, dataset, cache_dir,
                                                   warm_start, previous, after)
        if index == len(self.rungs) - 1:
            return trained.outputs["classifier"], gated
        with dsl.If(gated.outputs["passed"] == False, name=f"rung-{index}-failed"):  # noqa: E712
            retried = self.retries[index + 1](
                **{name: sections[name] for name in ATTEMPT_SECTIONS}, cache_dir=cache_dir,
                dataset=dataset, warm_start=trained.outputs["classifier"],
                previous=gated.outputs["decision"],
            ).set_display_name(f"retrain with rung {index + 1} ({self.rungs[index + 1].name})")
        with dsl.Else(name=f"rung-{index}-passed"):
            selected = self.deployment.on_cpu(select_classifier(
                classifier=trained.outputs["classifier"]), "500m", "1G",
            ).set_display_name(f"hand rung {index} on")
        return dsl.OneOf(retried.output, selected.outputs["winner"]), gated

    def _train_evaluate_gate(self, index, sections, dataset, cache_dir, warm_start, previous,
                             after) -> tuple[PipelineTask, PipelineTask]:
        rung, start = self.rungs[index], {"warm_start": warm_start} if warm_start else {}
        trained = self.deployment.for_training(train_rung(
            index=index, model=sections["model"], train=sections["train"],
            augment=sections["augment"], cache_dir=cache_dir, dataset=dataset, **start,
        )).set_display_name(f"train rung {index} ({rung.name})").after(*after)
        evaluated = self.deployment.on_cpu(evaluate_classifier(
            split="validation", evaluate=sections["evaluate"], train=sections["train"],
            dataset=dataset, classifier=trained.outputs["classifier"],
        ), "4", "8G").set_display_name(f"evaluate rung {index} on validation")
        earlier = {"previous": previous} if previous is not None else {}
        gated = self.deployment.on_cpu(gate_attempt(
            index=index, rung=rung.name, rungs=len(self.rungs), gate=sections["gate"],
            evaluation=evaluated.outputs["evaluation"], **earlier,
        ), "500m", "1G").set_display_name(f"gate rung {index}")
        return trained, gated

    def _sub_pipeline(self, index: int) -> GraphComponent:
        @dsl.pipeline(name=f"attempt-{index}",
                      description=f"Rung {index} ({self.rungs[index].name}), warm-started from "
                                  f"rung {index - 1}, and the attempts after it.")
        def retry(model: str, train: str, augment: str, evaluate: str, gate: str,
                  cache_dir: str, dataset: Input[Dataset], warm_start: Input[Model],
                  previous: Input[Artifact]) -> Model:
            sections = {"model": model, "train": train, "augment": augment,
                        "evaluate": evaluate, "gate": gate}
            winner, _ = self.attempt(index, sections, dataset, cache_dir, warm_start, previous)
            return winner

        return retry


def _prepare_data(sections: dict, deployment: Deployment, checked: PipelineTask):
    """ingest -> validate -> preview the augmentation; return the three tasks."""
    ingested = deployment.on_cpu(ingest_data(data=sections["data"]), "2", "4G", retries=2)
    ingested.set_display_name("ingest").after(checked)
    dataset = ingested.outputs["dataset"]
    validated = deployment.on_cpu(validate_data(validate=sections["validate"], dataset=dataset),
                                  "2", "8G").set_display_name("validate the data")
    previewed = deployment.on_cpu(preview_augmentation(
        augment=sections["augment"], train=sections["train"], dataset=dataset), "1", "2G",
    ).set_display_name("preview the augmentation").after(validated)
    return ingested, validated, previewed


def _test_and_register(sections: dict, deployment: Deployment, winner, first_gate, ingested,
                       validated, git_commit: str) -> None:
    """Evaluate the winner on test, apply the final gate, register and promote."""
    dataset = ingested.outputs["dataset"]
    tested = deployment.on_cpu(evaluate_classifier(
        split="test", evaluate=sections["evaluate"], train=sections["train"], dataset=dataset,
        classifier=winner), "4", "8G").set_display_name("evaluate the winner on test")
    tested.after(first_gate)
    # The champion changes between runs: the final gate and registration never cache.
    decided = deployment.on_cpu(final_gate(
        gate=sections["gate"], registry=sections["registry"],
        evaluation=tested.outputs["evaluation"]), "1", "2G", retries=2, cache=False,
    ).set_display_name("final gate on test")
    deployment.on_cpu(register_classifier(
        **sections, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        lineage={"git_commit": git_commit, "orchestrator": "kubeflow"},
        classifier=winner, dataset=dataset, validation=validated.outputs["validation"],
        evaluation=tested.outputs["evaluation"], decision=decided.outputs["decision"],
    ), "2", "4G", retries=2, cache=False).set_display_name("register and promote")


def build_pipeline(
    params: Params, deployment: Deployment | None = None, git_commit: str = "unknown"
) -> GraphComponent:
    """The pipeline for ``params``: one attempt per rung, its sections as the parameters'
    defaults. ``git_commit`` (of the pipeline's source) tags registered models."""
    deployment = deployment or Deployment()
    defaults = section_arguments(params)
    ladder = Ladder(params, deployment)
    rungs = len(params.train.ladder)

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    def image_finetune(
        data: str = defaults["data"], validate: str = defaults["validate"],
        augment: str = defaults["augment"], model: str = defaults["model"],
        train: str = defaults["train"], evaluate: str = defaults["evaluate"],
        gate: str = defaults["gate"], registry: str = defaults["registry"], cache_dir: str = "",
    ) -> None:
        sections = {"data": data, "validate": validate, "augment": augment, "model": model,
                    "train": train, "evaluate": evaluate, "gate": gate, "registry": registry}
        status = deployment.on_cpu(record_status(), "100m", "256M", cache=False)
        with dsl.ExitHandler(status.set_display_name("record the final status"), "fine-tune"):
            checked = deployment.on_cpu(check_params(rungs=rungs, **sections), "100m", "512M")
            checked.set_display_name("check params")
            ingested, validated, previewed = _prepare_data(sections, deployment, checked)
            winner, first_gate = ladder.attempt(0, sections, ingested.outputs["dataset"],
                                                cache_dir, after=(previewed,))
            _test_and_register(sections, deployment, winner, first_gate, ingested, validated,
                               git_commit)

    return image_finetune


def compile_pipeline(
    params: Params, package_path: str, deployment: Deployment | None = None,
    git_commit: str = "unknown",
) -> None:
    """Write the pipeline YAML that the KFP UI uploads and ``kfp.Client`` submits."""
    compiler.Compiler().compile(build_pipeline(params, deployment, git_commit), package_path)
