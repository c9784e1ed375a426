"""The Kubeflow pipeline: the DAG of ``dvc repro``, built from the components in components/.

    set rung 0 -> ... -> set rung n-1 -> check params -> ingest -> validate -> augment -> attempt 0
      -> dsl.OneOf(the winning classifier) -> export the engine -> evaluate(test, on the engine)
      -> final gate
      -> profile(validation) -> register/promote (with the reference profile)
    attempt k:  train(rung k, warm start from rung k-1) -> evaluate(validation) -> gate
                dsl.If(gate failed): attempt k+1      dsl.Else: hand the classifier on
    the last rung has no next attempt: its gate fails the run, and nothing is registered
    dsl.ExitHandler: record the final status, on success and on failure

KFP has no cycles, so the retrain loop is unrolled at compile time: one attempt per rung of
``train.ladder``. Every attempt after the first is a sub-pipeline, because a ``dsl.OneOf``
collects only from the branches of one ``dsl.If``/``dsl.Else`` group and cannot be nested:
each attempt resolves its own group and returns the winner as an ordinary output.

The pipeline's parameters, with the params.yaml it was compiled from as their defaults: the
knobs tuned per run, typed (``image_finetune.knobs``: data path, backbone, image size, each
rung's epochs and learning rate, the gate's thresholds), what they leave of each section as
a mapping, and ``cache_dir``. ``set-rung`` (one per rung, chained: a component's inputs are
fixed, the number of rungs is not) and ``check-params`` put the knobs back and validate the
whole; every later step receives only the checked sections it reads, so KFP's cache re-runs
just the steps whose values changed.
"""

import inspect
from typing import Any

from kfp import compiler, dsl
from kfp.dsl import Artifact, Dataset, Input, Model
from kfp.dsl.graph_component import GraphComponent
from kfp.dsl.pipeline_channel import PipelineChannel
from kfp.dsl.pipeline_task import PipelineTask

from image_finetune.components import (
    check_params,
    evaluate_classifier,
    export_engine,
    final_gate,
    gate_attempt,
    ingest_data,
    preview_augmentation,
    profile_classifier,
    record_status,
    register_classifier,
    select_classifier,
    set_rung,
    train_rung,
    train_rung_job,
    validate_data,
)
from image_finetune.config import Params
from image_finetune.knobs import (
    SECTION_KNOBS,
    dotted,
    knob_names,
    knob_path,
    knob_values,
    rung_knob,
    section_remainders,
)
from image_finetune.pipelines.deployment import Deployment
from image_finetune.steps.spec import ALL_SECTIONS, CLIMB_LADDER

PIPELINE_NAME = "image-finetune"
DISPLAY_NAME = "Image classifier fine-tuning"
EXTRA_DATA = "extra_data"  # the labelled-images input of a pipeline built with extra_data
# The sections an attempt (train, evaluate on validation, gate) reads: the retrain loop's.
ATTEMPT_SECTIONS = CLIMB_LADDER.sections
DESCRIPTION = (
    "Fine-tune a pretrained CNN: ingest, validate, augment, climb the ladder of "
    "training configurations until one passes the gate, evaluate on test, register "
    "and promote in MLflow."
)


def pipeline_arguments(params: Params) -> dict[str, Any]:
    """The pipeline's arguments for ``params``: the knobs, typed, and what they leave of each
    section as a mapping (``cache_dir`` aside, which is where, not what)."""
    return {**knob_values(params), **section_remainders(params)}


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
        self,
        index: int,
        sections: dict,
        dataset: PipelineChannel,
        cache_dir: PipelineChannel,
        warm_start: PipelineChannel | None = None,
        previous: PipelineChannel | None = None,
        after: tuple[PipelineTask, ...] = (),
    ) -> tuple[PipelineChannel, PipelineTask]:
        """Rung ``index`` and the attempts after it; return the winning classifier and this
        rung's gate."""
        trained, gated = self._train_evaluate_gate(
            index, sections, dataset, cache_dir, warm_start, previous, after
        )
        if index == len(self.rungs) - 1:
            return trained.outputs["classifier"], gated
        with dsl.If(gated.outputs["passed"] == False, name=f"rung-{index}-failed"):  # noqa: E712
            retried = self.retries[index + 1](
                **{name: sections[name] for name in ATTEMPT_SECTIONS},
                cache_dir=cache_dir,
                dataset=dataset,
                warm_start=trained.outputs["classifier"],
                previous=gated.outputs["decision"],
            ).set_display_name(f"retrain with rung {index + 1} ({self.rungs[index + 1].name})")
        with dsl.Else(name=f"rung-{index}-passed"):
            selected = self.deployment.on_cpu(
                select_classifier(classifier=trained.outputs["classifier"]),
                "500m",
                "1G",
            ).set_display_name(f"hand rung {index} on")
        return dsl.OneOf(retried.output, selected.outputs["winner"]), gated

    def _train_evaluate_gate(
        self, index, sections, dataset, cache_dir, warm_start, previous, after
    ) -> tuple[PipelineTask, PipelineTask]:
        rung, start = self.rungs[index], {"warm_start": warm_start} if warm_start else {}
        trained = (
            self._train(
                index=index,
                model=sections["model"],
                train=sections["train"],
                augment=sections["augment"],
                cache_dir=cache_dir,
                dataset=dataset,
                **start,
            )
            .set_display_name(f"train rung {index} ({rung.name})")
            .after(*after)
        )
        evaluated = self.deployment.on_cpu(
            evaluate_classifier(
                split="validation",
                evaluate=sections["evaluate"],
                train=sections["train"],
                dataset=dataset,
                classifier=trained.outputs["classifier"],
            ),
            "4",
            "8G",
        ).set_display_name(f"evaluate rung {index} on validation")
        earlier = {"previous": previous} if previous is not None else {}
        gated = self.deployment.on_cpu(
            gate_attempt(
                index=index,
                rung=rung.name,
                rungs=len(self.rungs),
                gate=sections["gate"],
                evaluation=evaluated.outputs["evaluation"],
                **earlier,
            ),
            "500m",
            "1G",
        ).set_display_name(f"gate rung {index}")
        return trained, gated

    def _train(self, **inputs) -> PipelineTask:
        """Train in the task's own pod, or launch and follow a multi-worker job."""
        deployment = self.deployment
        if deployment.distributed:
            return deployment.for_job_launcher(train_rung_job(**inputs, **deployment.job_inputs()))
        return deployment.for_training(train_rung(**inputs))

    def _sub_pipeline(self, index: int) -> GraphComponent:
        @dsl.pipeline(
            name=f"attempt-{index}",
            description=f"Rung {index} ({self.rungs[index].name}), warm-started from "
            f"rung {index - 1}, and the attempts after it.",
        )
        def retry(
            model: dict,
            train: dict,
            augment: dict,
            evaluate: dict,
            gate: dict,
            cache_dir: str,
            dataset: Input[Dataset],
            warm_start: Input[Model],
            previous: Input[Artifact],
        ) -> Model:
            sections = {name: value for name, value in locals().items() if name in ATTEMPT_SECTIONS}
            winner, _ = self.attempt(index, sections, dataset, cache_dir, warm_start, previous)
            return winner

        return retry


def _check_params(arguments: dict, params: Params, deployment: Deployment) -> PipelineTask:
    """set rung 0 -> ... -> set rung n-1 -> check params: the knobs back in their sections,
    the whole validated; return the check, whose outputs are the sections."""
    train = arguments["train"]
    for index, rung in enumerate(params.train.ladder):
        train = (
            deployment.on_cpu(
                set_rung(
                    index=index,
                    train=train,
                    epochs=arguments[rung_knob(index, "epochs")],
                    learning_rate=arguments[rung_knob(index, "learning_rate")],
                ),
                "100m",
                "512M",
            )
            .set_display_name(f"set rung {index} ({rung.name})")
            .output
        )
    sections = {name: arguments[name] for name in ALL_SECTIONS}
    knobs = {name: arguments[name] for name in SECTION_KNOBS}
    checked = check_params(rungs=len(params.train.ladder), **{**sections, "train": train}, **knobs)
    return deployment.on_cpu(checked, "100m", "512M").set_display_name("check params")


def _prepare_data(sections: dict, deployment: Deployment, extra=None):
    """ingest (with ``extra`` labelled images, where given) -> validate -> preview the
    augmentation; return the three tasks."""
    more = {"extra": extra} if extra is not None else {}
    ingested = deployment.on_cpu(ingest_data(data=sections["data"], **more), "2", "4G", retries=2)
    ingested.set_display_name("ingest")
    dataset = ingested.outputs["dataset"]
    validated = deployment.on_cpu(
        validate_data(validate=sections["validate"], dataset=dataset), "2", "8G"
    ).set_display_name("validate the data")
    previewed = (
        deployment.on_cpu(
            preview_augmentation(
                augment=sections["augment"], train=sections["train"], dataset=dataset
            ),
            "1",
            "2G",
        )
        .set_display_name("preview the augmentation")
        .after(validated)
    )
    return ingested, validated, previewed


def _test_and_register(
    sections: dict, deployment: Deployment, winner, first_gate, ingested, validated, git_commit: str
) -> None:
    """Export the winner to the fast engine, evaluate it on test on the engine that will
    serve, apply the final gate, profile the winner on validation, register (with the profile
    and the engine) and promote."""
    dataset = ingested.outputs["dataset"]
    engine_folder, tested = _export_and_test(sections, deployment, winner, first_gate, dataset)
    # The champion changes between runs: the final gate and registration never cache.
    decided = deployment.on_cpu(
        final_gate(
            gate=sections["gate"],
            registry=sections["registry"],
            evaluation=tested.outputs["evaluation"],
        ),
        "1",
        "2G",
        retries=2,
        cache=False,
    ).set_display_name("final gate on test")
    # Only a model that may be registered needs its reference profile, summarised on the
    # engine that will serve (as the server summarises its traffic).
    profiled = deployment.on_cpu(
        profile_classifier(
            evaluate=sections["evaluate"],
            train=sections["train"],
            dataset=dataset,
            classifier=winner,
            engine_folder=engine_folder,
        ),
        "4",
        "8G",
    ).set_display_name("profile the winner on validation")
    profiled.after(decided)
    registered = deployment.on_cpu(
        register_classifier(
            **sections,
            pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            lineage={"git_commit": git_commit, "orchestrator": "kubeflow"},
            classifier=winner,
            dataset=dataset,
            validation=validated.outputs["validation"],
            evaluation=tested.outputs["evaluation"],
            decision=decided.outputs["decision"],
            profile=profiled.outputs["profile"],
            engine_folder=engine_folder,
        ),
        "2",
        "4G",
        retries=2,
        cache=False,
    ).set_display_name("register and promote")
    deployment.with_credentials(decided)
    deployment.with_credentials(registered)


def _export_and_test(sections: dict, deployment: Deployment, winner, first_gate, dataset):
    """Export the winner to the fast engine, then evaluate it on test on that engine: the
    engine folder and the evaluation task."""
    exported = deployment.on_cpu(
        export_engine(
            engine=sections["engine"],
            evaluate=sections["evaluate"],
            gate=sections["gate"],
            train=sections["train"],
            dataset=dataset,
            classifier=winner,
        ),
        "4",
        "8G",
    ).set_display_name("export the engine")
    exported.after(first_gate)
    engine_folder = exported.outputs["engine_folder"]
    tested = deployment.on_cpu(
        evaluate_classifier(
            split="test",
            evaluate=sections["evaluate"],
            train=sections["train"],
            dataset=dataset,
            classifier=winner,
            engine_folder=engine_folder,
        ),
        "4",
        "8G",
    ).set_display_name("evaluate the winner on test")
    return engine_folder, tested


def parameter_descriptions(params: Params) -> dict[str, str]:
    """What each parameter of the pipeline for ``params`` is, for the run form."""
    rungs = params.train.ladder
    described = {}
    for name in knob_names(len(rungs)):
        path = knob_path(name)
        rung = f" (rung {rungs[int(path[2])].name})" if path[0] == "train" else ""
        described[name] = f"params.yaml {dotted(path)}{rung}"
    for name in ALL_SECTIONS:
        described[name] = f"params.yaml's {name} section, less its typed parameters"
    described["cache_dir"] = (
        "training feature cache, checkpoints and finished attempts "
        "(empty: a scratch folder per task)"
    )
    described[EXTRA_DATA] = (
        "labelled images added to train (an image-folder tree: a "
        "feedback export), beside data.extra_paths"
    )
    return described


def with_parameters(
    pipeline_func,
    defaults: dict[str, Any],
    descriptions: dict[str, str],
    artifacts: dict[str, Any] | None = None,
):
    """``pipeline_func(*values)`` with one input per ``artifacts`` entry (its annotation, no
    default), then one typed parameter per default, described in its docstring: KFP reads a
    pipeline's parameters from its signature, and these depend on the ladder compiled in."""
    artifacts = artifacts or {}
    pipeline_func.__signature__ = inspect.Signature(
        [
            *(
                inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind)
                for name, kind in artifacts.items()
            ),
            *(
                inspect.Parameter(
                    name,
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    default=value,
                    annotation=type(value),
                )
                for name, value in defaults.items()
            ),
        ]
    )
    pipeline_func.__doc__ = "\n".join(
        [
            DESCRIPTION,
            "",
            "Args:",
            *(f"    {name}: {descriptions[name]}" for name in [*artifacts, *defaults]),
        ]
    )
    return pipeline_func


def build_pipeline(
    params: Params,
    deployment: Deployment | None = None,
    git_commit: str = "unknown",
    extra_data: bool = False,
) -> GraphComponent:
    """The pipeline for ``params``: one attempt per rung, ``params`` as the parameters'
    defaults. ``git_commit`` (of the pipeline's source) tags registered models. With
    ``extra_data`` it takes an input artifact of labelled images (``extra_data``: the
    monitoring pipeline's feedback export) that the ingest adds to train."""
    deployment = deployment or Deployment()
    defaults = {**pipeline_arguments(params), "cache_dir": deployment.cache_dir}
    artifacts = {EXTRA_DATA: Input[Dataset]} if extra_data else {}
    ladder = Ladder(params, deployment)

    def image_finetune(*values) -> None:
        arguments = dict(zip([*artifacts, *defaults], values, strict=True))
        status = deployment.on_cpu(record_status(), "100m", "256M", cache=False)
        with dsl.ExitHandler(status.set_display_name("record the final status"), "fine-tune"):
            checked = _check_params(arguments, params, deployment)
            sections = {name: checked.outputs[name] for name in ALL_SECTIONS}
            ingested, validated, previewed = _prepare_data(
                sections, deployment, arguments.get(EXTRA_DATA)
            )
            winner, first_gate = ladder.attempt(
                0, sections, ingested.outputs["dataset"], arguments["cache_dir"], after=(previewed,)
            )
            _test_and_register(
                sections, deployment, winner, first_gate, ingested, validated, git_commit
            )

    return dsl.pipeline(name=PIPELINE_NAME, display_name=DISPLAY_NAME, description=DESCRIPTION)(
        with_parameters(image_finetune, defaults, parameter_descriptions(params), artifacts)
    )


def compile_pipeline(
    params: Params,
    package_path: str,
    deployment: Deployment | None = None,
    git_commit: str = "unknown",
) -> None:
    """Write the pipeline YAML that the KFP UI uploads and ``kfp.Client`` submits."""
    compiler.Compiler().compile(build_pipeline(params, deployment, git_commit), package_path)
