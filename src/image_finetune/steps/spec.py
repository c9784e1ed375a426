"""What each step declares: the params.yaml keys it reads, the paths it reads and writes,
the caches it keeps, and the module that implements it. dvc.yaml stages, CLI defaults and
KFP components are checked against these declarations (tests/unit/test_architecture.py),
so they cannot drift apart. The catalog is data only: reading it imports no step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from image_finetune.cache import DEFAULT_CACHE
from image_finetune.config import Params

PARAMS_FILE = "params.yaml"
CLI = "image-finetune"


@dataclass(frozen=True)
class PathOption:
    """A path a step reads or writes: its CLI option and its place in the project."""

    option: str
    path: str
    cache: bool = True  # outputs: in DVC's cache (False: small files kept in git)

    @property
    def flag(self) -> str:
        """The CLI option, as typed."""
        return f"--{self.option.replace('_', '-')}"


@dataclass(frozen=True)
class StepSpec:
    """One step's declaration."""

    name: str  # the CLI command; the dvc.yaml stage where ``stage``
    module: str  # image_finetune.steps.<module> implements it
    params: tuple[str, ...] = ()  # params.yaml keys it reads: sections or section.key
    reads: tuple[PathOption, ...] = ()
    writes: tuple[PathOption, ...] = ()
    # Files DVC re-runs the stage for without the step reading them: the sources record
    # stands for the data and weights files (wherever they are, downloaded or local).
    watches: tuple[str, ...] = ()
    scratch: tuple[PathOption, ...] = ()  # caches: named in the command, neither deps nor outs
    stage: bool = False
    always_changed: bool = False  # DVC runs it every time (it looks outside the project)

    @property
    def sections(self) -> tuple[str, ...]:
        """The params.yaml sections it reads (what a KFP component receives)."""
        return tuple(sorted({key.split(".")[0] for key in self.params}))

    def path_option(self, option: str) -> PathOption:
        """The read, write or scratch path option named ``option``."""
        for path in (*self.reads, *self.writes, *self.scratch):
            if path.option == option:
                return path
        raise KeyError(f"step {self.name!r} has no path option {option!r}")

    @property
    def paths(self) -> dict[str, Path]:
        """Each path option's place in the project (the CLI options' defaults), by option."""
        return {p.option: Path(p.path) for p in (*self.reads, *self.writes, *self.scratch)}

    def command(self) -> str:
        """The dvc.yaml ``cmd``: every input and output named."""
        ports = (*self.reads, *self.writes, *self.scratch)
        return " ".join(
            [CLI, self.name, "--params", PARAMS_FILE, *(f"{p.flag} {p.path}" for p in ports)]
        )


def union(name: str, module: str, *specs: StepSpec, **fields) -> StepSpec:
    """A step composed of others: it reads the params they read."""
    params = tuple(sorted({key for spec in specs for key in spec.params}))
    return StepSpec(name=name, module=module, params=_drop_covered(params), **fields)


def _drop_covered(keys: tuple[str, ...]) -> tuple[str, ...]:
    """``train.seed`` is covered by ``train``."""
    return tuple(k for k in keys if k.split(".")[0] == k or k.split(".")[0] not in keys)


ALL_SECTIONS = tuple(sorted(field.alias or name for name, field in Params.model_fields.items()))
DATA = PathOption("data", "data/ingested")
# The training cache: relative to the project's root, shared by its experiments (cache.py).
CACHE = PathOption("cache", DEFAULT_CACHE.as_posix())

SOURCES = "data/sources.json"

CHECK_PARAMS = StepSpec("check-params", "check_params", params=ALL_SECTIONS)
SET_RUNG = StepSpec("set-rung", "set_rung", params=("train",))  # Kubeflow's: see its module
LOCATE_SOURCES = StepSpec(
    "locate-sources",
    "locate_sources",
    params=(
        "data.path",
        "data.source",
        "data.tfds_name",
        "model.backbone",
        "model.weights",
        "model.weights_file",
    ),
    writes=(PathOption("out", SOURCES),),
    stage=True,
    always_changed=True,
)
INGEST = StepSpec(
    "ingest",
    "ingest",
    params=("data",),
    watches=(SOURCES,),
    writes=(PathOption("out", "data/ingested"),),
    stage=True,
)
VALIDATE = StepSpec(
    "validate",
    "validate",
    params=("validate",),
    reads=(DATA,),
    writes=(PathOption("out", "reports/validation"),),
    stage=True,
)
AUGMENT = StepSpec(
    "augment",
    "augment",
    params=("augment", "train.seed"),
    reads=(DATA,),
    writes=(PathOption("out", "reports/augment"),),
    stage=True,
)
TRAIN_RUNG = StepSpec(
    "train-rung",
    "train_rung",
    params=("augment", "model", "train"),
    watches=(SOURCES,),
    reads=(DATA,),
    writes=(PathOption("out", "models/attempt_0"),),
    scratch=(CACHE,),
)
# Kubeflow's, with --workers N: the same rung as a distributed TFJob (see its module).
TRAIN_JOB = StepSpec(
    "train-job",
    "train_job",
    params=TRAIN_RUNG.params,
    reads=(DATA,),
    writes=TRAIN_RUNG.writes,
    scratch=(CACHE,),
)
# The selected classifier on the fast engine, fp32 checked and int8 judged on test. Not in
# models/: DVC refuses an output inside another stage's output (train's models/).
ENGINE = PathOption("engine", "engine")
EXPORT_ENGINE = StepSpec(
    "export-engine",
    "export_engine",
    params=("engine", "evaluate.batch_size", "gate.significance", "train.seed"),
    reads=(DATA, PathOption("model", "models/selected/model.keras")),
    writes=(PathOption("out", ENGINE.path),),
    stage=True,
)
# On the engine and precision that will serve (the export-engine step's folder says which).
EVALUATE = StepSpec(
    "evaluate",
    "evaluate",
    params=("evaluate", "train.seed"),
    reads=(DATA, PathOption("model", "models/selected/model.keras"), ENGINE),
    writes=(
        PathOption("out", "reports/evaluation"),
        PathOption("metrics", "metrics/evaluation.json", cache=False),
    ),
    stage=True,
)
# The reference profile a registered version carries (monitoring): from validation images,
# summarised on the engine and precision that will serve.
PROFILE = StepSpec(
    "profile",
    "profile",
    params=(
        "evaluate.batch_size",
        "evaluate.profile_dimensions",
        "evaluate.profile_fit_images",
        "train.seed",
    ),
    reads=(DATA, PathOption("model", "models/selected/model.keras"), ENGINE),
    writes=(PathOption("out", "reports/reference_profile"),),
    stage=True,
)
GATE_ATTEMPT = StepSpec(
    "gate-attempt",
    "gate_attempt",
    params=("gate",),
    reads=(PathOption("evaluation", "models/attempt_0/evaluation"),),
    writes=(PathOption("out", "models/attempt_0/decision.json"),),
)
SELECT = StepSpec(
    "select",
    "select",
    reads=(PathOption("model", "models/attempt_0/model.keras"),),
    writes=(PathOption("out", "models/selected"),),
)
CLIMB_LADDER = union(
    "train",
    "climb_ladder",
    TRAIN_RUNG,
    EVALUATE,
    GATE_ATTEMPT,
    watches=TRAIN_RUNG.watches,
    reads=(DATA, PathOption("validation", "reports/validation/result.json")),
    writes=(
        PathOption("out", "models"),
        PathOption("metrics", "metrics/train.json", cache=False),
        PathOption("live", "dvclive", cache=False),
    ),
    scratch=(CACHE,),
    stage=True,
)
FINAL_GATE = StepSpec(
    "gate",
    "final_gate",
    params=("gate", "registry"),
    reads=(PathOption("evaluation", "reports/evaluation"),),
    writes=(PathOption("out", "reports/gate.json", cache=False),),
    stage=True,
)
# Every section: the registered version is tagged with the hash of the whole configuration.
REGISTER = StepSpec(
    "register",
    "register",
    params=ALL_SECTIONS,
    reads=(
        DATA,
        PathOption("validation", "reports/validation"),
        PathOption("models", "models"),
        PathOption("evaluation", "reports/evaluation"),
        PathOption("decision", "reports/gate.json"),
        PathOption("profile", "reports/reference_profile"),
        ENGINE,
    ),
    writes=(PathOption("out", "reports/registration.json", cache=False),),
    stage=True,
)
LIST_MODELS = StepSpec("models", "manage_registry", params=("registry",))
PROMOTE = StepSpec("promote", "manage_registry", params=("registry",))
ROLLBACK = StepSpec("rollback", "manage_registry", params=("registry",))
# Configured by flags and environment variables (ServeSettings): no params.yaml in an image.
SERVE = StepSpec("serve", "serve")
PREDICT_BATCH = StepSpec(
    "predict-batch",
    "predict_batch",
    params=("registry",),
    reads=(PathOption("data_manifest", "data/ingested/manifest.json"),),
    writes=(PathOption("out", "predictions.csv"),),
)
EXPORT = StepSpec(
    "export-savedmodel",
    "export",
    reads=(PathOption("model", "models/selected/model.keras"),),
    writes=(PathOption("out", "models/savedmodel/1"),),
)
# Images or a server's recorded windows against a registered version's reference profile.
MONITOR = StepSpec(
    "monitor",
    "monitor",
    params=("evaluate.batch_size", "registry"),
    writes=(PathOption("out", "reports/monitor"),),
)
MANAGE_CACHE = StepSpec("cache", "manage_cache", scratch=(CACHE,))
RECORD_STATUS = StepSpec(
    "record-status", "record_status", writes=(PathOption("out", "reports/status.md"),)
)
# Operating the served model: over the server's feedback store and the registry.
FEEDBACK = StepSpec("feedback", "feedback", writes=(PathOption("out", "data/feedback"),))
ROLLOUT = StepSpec("rollout", "rollout", params=("gate", "registry"))

CATALOG: dict[str, StepSpec] = {
    spec.name: spec
    for spec in (
        CHECK_PARAMS,
        SET_RUNG,
        LOCATE_SOURCES,
        INGEST,
        VALIDATE,
        AUGMENT,
        TRAIN_RUNG,
        TRAIN_JOB,
        EXPORT_ENGINE,
        EVALUATE,
        PROFILE,
        GATE_ATTEMPT,
        SELECT,
        CLIMB_LADDER,
        FINAL_GATE,
        REGISTER,
        LIST_MODELS,
        PROMOTE,
        ROLLBACK,
        SERVE,
        PREDICT_BATCH,
        EXPORT,
        MONITOR,
        MANAGE_CACHE,
        RECORD_STATUS,
        FEEDBACK,
        ROLLOUT,
    )
}
# The DVC pipeline as a flat list, in run order.
STAGES = (
    LOCATE_SOURCES,
    INGEST,
    VALIDATE,
    AUGMENT,
    CLIMB_LADDER,
    EXPORT_ENGINE,
    EVALUATE,
    FINAL_GATE,
    PROFILE,
    REGISTER,
)
