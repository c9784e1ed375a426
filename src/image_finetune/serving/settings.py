"""What the server is configured with: the model it serves, the limits it enforces, how it
batches. The CLI fills it from flags and environment variables; nothing comes from
params.yaml, so the server runs from an empty working directory (a container image)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from image_finetune.config import RegistryParams
from image_finetune.errors import ConfigError

Positive = Annotated[int, Field(gt=0)]
Seconds = Annotated[float, Field(gt=0.0)]
MIB = 1024 * 1024
# What a version is served on (IMAGE_FINETUNE_ENGINE, engines.resolve_engine checks the name)
# and at which precision: auto is the one the version's engine manifest says serves.
Precision = Literal["auto", "fp32", "int8"]
PRECISION_CHOICES: tuple[str, ...] = get_args(Precision)
TOKEN_ENV = "IMAGE_FINETUNE_TOKEN"  # the token itself; never a flag (flags show in ps)


class OperateSettings(BaseModel):
    """Operating the model: drift monitoring, labelled feedback, champion/challenger rollout
    (IMAGE_FINETUNE_MONITOR*, IMAGE_FINETUNE_FEEDBACK*, IMAGE_FINETUNE_ROLLOUT, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    monitor: bool = True
    # Images per tested window: at least monitoring.drift.MIN_WINDOW (not imported here:
    # the CLI reads these settings without loading scipy).
    monitor_window: Annotated[int, Field(ge=20)] = 500
    monitor_max_seconds: Seconds = 3600.0  # a partial window is tested after this long
    # The share of one core window tests may take: under heavy traffic the monitor samples
    # that share of the answered images into its windows (a metric, and the rest counted),
    # so it costs the answers little whatever the rate (bench/monitor_overhead.py).
    monitor_cpu_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    monitor_record_dir: Path | None = None  # the windows' summaries as .npz, bounded
    monitor_record_max: Positive = 100  # windows kept on disk at most
    rollout: Literal["off", "shadow", "canary"] = "off"
    canary_percent: Annotated[float, Field(ge=0.0, le=100.0)] = 10.0
    challenger_alias: str = "challenger"
    feedback_uri: str | None = None  # sqlite:///<path> or a path; None: feedback off
    feedback_rate: Annotated[float, Field(gt=0.0)] = 50.0  # feedback posts a second
    feedback_burst: Positive = 100
    feedback_ttl_seconds: Seconds = 3600.0  # how long an answer takes feedback
    feedback_max_requests: Positive = 10_000  # answers remembered for feedback
    feedback_max_image_mib: Positive = 64  # their images' bytes at most
    feedback_max_rows: Positive = 100_000  # labelled images stored at most
    feedback_max_store_mib: Positive = 2048  # their bytes at most


class ServeSettings(BaseModel):
    """The server's configuration, validated once at start."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Each field but token, token_file and operate is an option of ``image-finetune serve``
    # (cli.serve_options): its description is the option's help.
    model_name: str = Field(RegistryParams().model_name, description="registered model to serve")
    alias: str = Field("champion", description="its alias to serve")
    tracking_uri: str = Field(
        RegistryParams().tracking_uri, description="MLflow tracking/registry URI"
    )
    # auto: the fastest engine installed (engines.DEFAULT_ENGINE first); versions registered
    # without an engine folder are served on Keras whatever this says.
    engine: str = Field(
        "auto",
        description=(
            "what the model runs on: auto, tensorflow, onnxruntime or openvino (versions "
            "without an engine folder run on Keras)"
        ),
    )
    precision: Precision = Field(
        "auto",
        description=(
            "auto (what the version's engine manifest serves), fp32, or int8 (where the manifest "
            "found it servable)"
        ),
    )
    top_k: Positive = Field(3, description="classes answered per image unless a request asks")
    # Limits, each enforced while the request is read. Bodies in flight take at most
    # max_connections x max_body_bytes of memory (2 GiB by default); more requests get 503
    # (the probes and /metrics are never counted: serving/guard.py).
    max_connections: Positive = Field(
        128, description=("requests in flight at once, probes apart; more get 503")
    )
    max_body_bytes: Positive = Field(16 * MIB, description="bytes per request at most")
    max_image_bytes: Positive = Field(5 * MIB, description="bytes per image at most")
    max_images: Positive = Field(64, description="images per request at most")
    # A 12-megapixel phone photo fits; a small file declaring a huge image does not.
    max_pixels: Positive = Field(4096 * 4096, description="declared pixels per image at most")
    body_timeout_seconds: Seconds = Field(30.0, description="for a request's body")
    # The request line and headers: within this time of their first byte, and this size.
    header_timeout_seconds: Seconds = Field(10.0, description="for a request's line and headers")
    max_header_bytes: Annotated[int, Field(ge=4096)] = Field(
        32 * 1024, description="bytes of a request's line and headers at most"
    )
    # Pixels decoded (a JPEG at its reduced decoding size): per request, refused over it
    # before decoding (413); and for all requests being decoded at once, waited for up to
    # decode_wait_seconds, then 503 (serving/budget.py).
    max_request_pixels: Positive = Field(
        4 * 4096 * 4096, description="pixels to decode per request"
    )
    max_decode_pixels: Positive = Field(  # two requests at the budget (2 threads)
        8 * 4096 * 4096, description="pixels decoded at once, all requests"
    )
    decode_wait_seconds: Seconds = Field(
        5.0, description=("how long a request waits for the decode budget; then 503")
    )
    # Dynamic batching: concurrent requests share one model call. On 2 CPU cores a call of
    # 32 images costs less per image than one of 64 (bench/serve_load.py).
    max_batch_size: Positive = Field(32, description="images per model call at most")
    max_wait_ms: Annotated[float, Field(ge=0.0, le=1000.0)] = Field(
        5.0, description=("how long a model call waits for requests in flight")
    )
    max_queued_images: Positive = Field(
        1024, description=("images waiting for a model call at most; more get 503")
    )
    decode_threads: Positive = Field(2, description="threads decoding images")
    # The registry: alias polling once loaded, retrying while it cannot be reached.
    poll_seconds: Seconds = Field(30.0, description="alias polling interval")
    retry_seconds: Seconds = Field(5.0, description="retry interval while the registry is away")
    # The probes on a port of their own, answered by a process that never waits for the
    # event loop's request parsing (serving/probe_process.py); off unless set.
    probe_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="also answer the probes on this port, from a process of their own",
    )
    loop_stall_seconds: Seconds = Field(
        30.0,
        description="liveness and readiness fail once the event loop has not run for this long",
    )
    token: SecretStr | None = None
    token_file: Path | None = None  # where the token came from: re-read when it changes
    operate: OperateSettings = OperateSettings()

    @model_validator(mode="after")
    def _a_known_engine(self) -> ServeSettings:
        if self.engine == "auto":  # the default: the CLI's start imports no engines module
            return self
        from image_finetune.engines import ENGINES  # names only: no engine is imported

        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}: choose auto, {', '.join(ENGINES)}")
        return self

    @model_validator(mode="after")
    def _a_request_fits_its_limits(self) -> ServeSettings:
        for smaller, larger in (
            ("max_image_bytes", "max_body_bytes"),
            ("max_images", "max_queued_images"),
            ("max_pixels", "max_request_pixels"),
            ("max_request_pixels", "max_decode_pixels"),
        ):
            if getattr(self, smaller) > getattr(self, larger):
                raise ValueError(
                    f"{smaller} ({getattr(self, smaller)}) is over {larger} "
                    f"({getattr(self, larger)})"
                )
        return self

    @property
    def max_parts(self) -> int:
        """Multipart parts per request: the images and a few form fields beside them."""
        return self.max_images + 8


def operate_from_env(environ: Mapping[str, str]) -> OperateSettings:
    """OperateSettings from ``IMAGE_FINETUNE_<SETTING>`` variables (IMAGE_FINETUNE_MONITOR=off,
    IMAGE_FINETUNE_ROLLOUT=shadow, ...), validated like the flags; unset ones keep their
    defaults."""
    variables = {name: f"IMAGE_FINETUNE_{name.upper()}" for name in OperateSettings.model_fields}
    return OperateSettings(
        **{
            name: environ[variable]
            for name, variable in variables.items()
            if environ.get(variable, "") != ""
        }
    )


def read_token(token: str | None, token_file: Path | None) -> str | None:
    """The bearer token: given directly (an environment variable) or in a file (a mounted
    Secret); surrounding whitespace dropped, since Secrets often end in a newline."""
    if token_file is not None:
        token = token_file.read_text()
    token = (token or "").strip()
    return token or None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, settings: ServeSettings, no_auth: bool) -> None:
    """Refuse to serve without a token on an address other machines reach, unless asked to
    (``no_auth``: a proxy in front authenticates)."""
    if settings.token is None and not no_auth and not is_loopback(host):
        raise ConfigError(
            f"serving on {host} without a token: set {TOKEN_ENV} or "
            "IMAGE_FINETUNE_TOKEN_FILE, or pass --no-auth where something in front "
            "authenticates"
        )
