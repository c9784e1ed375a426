"""The ``train-job`` step: one rung of the ladder trained by a distributed job (a ``TFJob`` of
Kubeflow's training operator, or a ``TrainJob`` of Kubeflow Trainer v2) instead of in the
step's own process. It stages the params and inputs on the cache volume, creates the job,
follows it (its state and its chief's log), and hands the chief's attempt folder on as the
rung's output."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from image_finetune.config import Params
from image_finetune.errors import TrainJobError
from image_finetune.errors import exit_on_termination as exit_on_termination  # component's
from image_finetune.kube import TrainingJobs
from image_finetune.locate import choose_weights
from image_finetune.steps.layout import HISTORY_FILE, MODEL_FILE, RESULT_FILE
from image_finetune.training.job_spec import (
    JobPolicy,
    JobState,
    LogCursor,
    Placement,
    TrainJob,
    distributed_params,
    failure_message,
    job_manifest,
    job_name,
    new_log_lines,
)
from image_finetune.training.job_spec import job_kind as job_kind  # the component's

log = logging.getLogger(__name__)
# How far back a log read reaches beyond the time since the last one: reads overlap, and
# the cursor drops what was shown.
LOG_OVERLAP_SECONDS = 30


@dataclass(frozen=True)
class Launch:
    """Where the job runs: ``workers`` pods of ``image`` with ``gpus`` GPUs each, the cache
    volume ``claim`` mounted at ``mount``; ``run_id`` names the job; ``launcher`` is its kind
    (``tfjob``, or ``trainjob`` run by the ClusterTrainingRuntime ``runtime``)."""

    run_id: str
    workers: int
    gpus: int
    image: str
    claim: str
    mount: str
    policy: JobPolicy = field(default_factory=JobPolicy)
    launcher: str = "tfjob"
    placement: Placement = field(default_factory=Placement)
    runtime: str = "image-finetune-tensorflow"


@dataclass(frozen=True)
class Clock:
    """Time, as the wait reads and spends it (tests pass their own)."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    echo: Callable[[str], None] = print


def train_job(
    params: Params,
    index: int,
    data: Path,
    out: Path,
    cache: Path,
    root: Path,
    launch: Launch,
    jobs: TrainingJobs,
    warm_start: Path | None = None,
    clock: Clock = Clock(),
) -> dict:
    """Train rung ``index`` as a distributed job (``launch.launcher``); write the chief's
    ``model.keras``, ``history.csv`` and ``result.json`` to ``out`` and return the result.
    ``cache`` must be on the volume the workers mount. The weights are chosen here, against
    ``root`` (as :func:`choose_weights` does for a rung trained in one pod), so every worker
    builds the same model. Fails with the job's reason if it fails; deletes it if it outlives
    ``launch.policy.timeout_seconds`` or the wait is cancelled."""
    job = _plan(index, cache, launch, warm_start is not None)
    if not jobs.exists(job.name):
        chosen = params.model_copy(update={"model": choose_weights(params.model, root)})
        _stage(chosen, job, data, warm_start)
        jobs.create(job_manifest(job, jobs.namespace, launch.launcher, launch.runtime))
        log.info(
            "created %s %s: %d workers x %d GPUs", jobs.kind.kind, job.name, job.workers, job.gpus
        )
    else:
        log.info("%s %s exists (a retried launcher): following it", jobs.kind.kind, job.name)
    try:
        state = _await(job, jobs, clock)
    finally:
        shutil.rmtree(job.layout.data, ignore_errors=True)
    if not state.succeeded:
        raise TrainJobError(failure_message(job.name, state, jobs.namespace, jobs.kind))
    return _collect(job, out, jobs.kind.kind)


def _plan(index: int, cache: Path, launch: Launch, warm_start: bool) -> TrainJob:
    if not PurePosixPath(cache).is_relative_to(launch.mount):
        raise TrainJobError(
            f"cache_dir {str(cache)!r} is not on the cache volume ({launch.claim} at "
            f"{launch.mount}): the workers see only that volume; leave cache_dir at its "
            f"default or put it under {launch.mount}"
        )
    return TrainJob(
        name=job_name(launch.run_id, index),
        run_id=launch.run_id,
        index=index,
        workers=launch.workers,
        gpus=launch.gpus,
        image=launch.image,
        claim=launch.claim,
        mount=launch.mount,
        cache=str(cache),
        warm_start=warm_start,
        policy=launch.policy,
        placement=launch.placement,
    )


def _stage(params: Params, job: TrainJob, data: Path, warm_start: Path | None) -> None:
    """The workers' params and inputs, on the volume they mount."""
    layout = job.layout
    Path(layout.folder).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(layout.out, ignore_errors=True)  # a previous try's, never handed on
    tree = distributed_params(params.model_dump(mode="json", by_alias=True))
    Path(layout.params).write_text(yaml.safe_dump(tree, sort_keys=False))
    shutil.copytree(data, layout.data, dirs_exist_ok=True)
    if warm_start is not None:
        Path(layout.warm_start).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(warm_start, layout.warm_start)
    log.info("staged params and inputs in %s", layout.folder)


def _await(job: TrainJob, jobs: TrainingJobs, clock: Clock) -> JobState:
    """Follow the job to its end, relaying its state and its chief's log; delete it if the
    wait times out or is cancelled, so that nothing is left holding GPUs."""
    try:
        return _follow(job, jobs, clock)
    except (TrainJobError, KeyboardInterrupt, SystemExit):
        log.warning("deleting %s %s: its launcher stopped waiting", jobs.kind.kind, job.name)
        jobs.delete(job.name)
        raise


def _follow(job: TrainJob, jobs: TrainingJobs, clock: Clock) -> JobState:
    deadline, shown = clock.now() + job.policy.timeout_seconds, None
    chief_log = ChiefLog(job.name, jobs, clock)
    while True:
        state = jobs.state(job.name)
        if state != shown:
            log.info("%s %s: %s (%s)", jobs.kind.kind, job.name, state.phase, state.message)
            shown = state
        chief_log.relay()
        if state.finished:
            return state
        if clock.now() >= deadline:
            raise TrainJobError(
                f"{jobs.kind.kind} {job.name} did not finish within "
                f"{job.policy.timeout_seconds} s; deleted it"
            )
        clock.sleep(job.policy.poll_seconds)


class ChiefLog:
    """Worker 0's log, relayed into the launcher's: each read overlaps the last, and the
    cursor shows each line once."""

    def __init__(self, name: str, jobs: TrainingJobs, clock: Clock):
        self.name, self.jobs, self.clock = name, jobs, clock
        self.cursor = LogCursor()
        self.read_at: float | None = None

    def relay(self) -> None:
        pod = self.jobs.chief_pod(self.name)
        if pod is None:
            return
        now = self.clock.now()
        window = None if self.read_at is None else int(now - self.read_at) + LOG_OVERLAP_SECONDS
        lines, self.cursor = new_log_lines(self.jobs.log(pod, window), self.cursor)
        self.read_at = now
        for line in lines:
            self.clock.echo(f"[{pod}] {line}")


def _collect(job: TrainJob, out: Path, kind: str) -> dict:
    """The chief's attempt folder, as the rung's output; the job's folder then goes."""
    chief = Path(job.layout.out)
    missing = [
        name for name in (MODEL_FILE, HISTORY_FILE, RESULT_FILE) if not (chief / name).is_file()
    ]
    if missing:
        raise TrainJobError(
            f"{kind} {job.name} succeeded but its chief wrote no {', '.join(missing)} in {chief}"
        )
    shutil.copytree(chief, out, dirs_exist_ok=True)
    shutil.rmtree(job.layout.folder, ignore_errors=True)
    return {**json.loads((out / RESULT_FILE).read_text()), "model_path": str(out / MODEL_FILE)}
